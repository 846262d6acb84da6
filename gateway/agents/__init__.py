"""Agents: one per grid element, sans-IO state machines stepped by the daemon."""
