"""Performance harnesses: each measures cases in fresh subprocesses and prints one JSON document."""
