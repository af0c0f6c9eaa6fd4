"""The `assistant-ingest` command: running the processes, keys, the dev stack, the bulk client."""
