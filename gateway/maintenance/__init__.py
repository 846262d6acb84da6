"""Predictive maintenance: asset health, failure probability, work orders and backup plans.

Everything here is sans-IO, like the agents: health inputs are computed from history rows the
caller read, the failure model and the planners take `now` and data and return decisions. The
daemon's side (reading the history, publishing work orders and notices, SCADA commands) is
`gateway/maintenance/service.py`. The method, its parameters and their sources:
docs/maintenance.md.
"""
