"""Pure domain: requests, ids, statuses and the views of stored documents; no I/O."""
