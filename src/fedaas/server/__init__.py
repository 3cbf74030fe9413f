"""The coordinator: HTTP API, round state machine, persistence, artifacts, auth."""
