"""One module per grid element type, each ending in `SPEC = AgentSpec(...)`.

The registry (`gateway.agents.registry`) imports every module of this package and collects its
`SPEC`: a new agent type is one new module here, nothing else to list or register.
"""
