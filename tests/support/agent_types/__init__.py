"""Agent types that exist only for tests, one module each."""
