"""Sending work: task names, their queues, and the one way to send by name."""
