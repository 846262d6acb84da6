"""Real servers (mosquitto, Modbus) that tests and benchmarks run against."""
