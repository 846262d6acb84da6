"""The commissioning engineer's tools: SCL import, device discovery, sequence-of-events export.

Each module is plain code over a model (an SCL document, a browse result, the event log); the
command line in `gateway.cli.commissioning` does the I/O.
"""
