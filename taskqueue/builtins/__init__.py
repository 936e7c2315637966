"""Handlers taskqueue registers itself (taskqueue.prune)."""
