"""Agents: one per grid element, sans-IO state machines stepped by the daemon.

Layout:
  fsm.py          transition tables (state, event) → next state, every pair named (IGNORE for no-ops)
  actions.py      what agents ask for: ControlRequest, Alert, BusMessage, StateChange
  schema.py       site-file attributes of the gateway's own types, one pydantic model each; AgentType
                  names the types the gateway's code treats specially
  physics.py      C57.91 thermal/aging, IEEE 1547 volt-var/volt-watt, LDC, thermal replica, trend
  elements/       one module per agent type, each ending in its SPEC; a new type is a new module here
    power_line.py, transformer.py, circuit_breaker.py, substation.py, capacitor_bank.py,
    renewable.py    states, events, TABLE, memory, pure step()
    smart_meter.py  the meter fleet, column-wise (numpy), evaluated in bulk through its TABLE
  spec.py         AgentSpec: one agent type declared once (table, attributes, point vocabulary, inputs,
                  link rules, factory, requests, bus subscriptions and handlers, view)
  registry.py     SPECS, spec_for(): every SPEC found in elements/, read by the runtime, site validation,
                  CLI, HIL, docs
  vocabulary.py   the registry's point vocabulary by type name, for the site validation
  topology.py     the graph of connection_rules (supply paths, who feeds whom)
  bus.py          the priority bus agents talk over
  reliability.py  outage ledger and IEEE 1366 indices
  runtime.py      AgentRuntime: builds agents, topology, bus and fleet from the site; the daemon's API
  cli.py          `stima agents ...` and `stima reliability`
"""
