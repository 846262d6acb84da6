"""The contract between the gateway and its adapters: the floor every other layer stands on.

The process image (`points`), the clock (`clock`), the ports an adapter implements or is handed
(`ports`) and the site file's sections an adapter reads (`settings`). Nothing here imports
anything else of the project, so the adapters in `protocols/` can depend on it alone and the
gateway core never needs to import an adapter.
"""
