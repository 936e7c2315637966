"""The worker: claim loop, executor and side duties (heartbeat, listener)."""
