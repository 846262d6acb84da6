"""hil: a simulated substation speaking the real protocols, for rigs, demos and tests."""
