"""Protection: settings, the native core's binding, the Python reference and the fast path."""
