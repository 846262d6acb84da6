"""Acting on decisions: one switching authority for every control write to the plant.

- `network`: the feeder network as switching sees it (sources, sections, switching devices),
  what a configuration energises, and a power-flow estimate from live loads;
- `interlocks`: the one interlock table, as data;
- `authority`: requests in, interlock decisions, select-before-operate, overrides, audit records
  and the writes to carry out; check-back of every operation;
- `faults`: fault records (what protection tripped on, where it is, whether it is isolated);
- `sequences`: switching sequences (ordered steps, preconditions, expected post-states),
  their validation against the topology and the power-flow estimate, and their execution;
- `flisr`: fault location, isolation and service restoration, planned as a sequence.

All of it is sans-IO: time comes in as arguments, the plant's state through `GridState`, and
the writes go out as values for the daemon's wiring to carry out.
"""
