"""Electrical model of the simulated substation: network, power flow, faults, profiles."""
