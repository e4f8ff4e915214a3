"""nsx service: API, executor, result store, CLI."""
