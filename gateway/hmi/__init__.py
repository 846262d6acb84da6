"""The local web HMI: one-line diagram, alarms, events, trends and careful control in the browser,
plus the read-only REST API, the WebSocket stream of changes and the GeoJSON export
(docs/hmi.md). Served by the daemon on its own event loop (`gateway.hmi.server`)."""
