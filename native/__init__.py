"""The C protection-logic core (built by cffi at install time) and its build script."""
