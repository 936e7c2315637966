"""The example project: taskqueue in a small Django site, run by ``scripts/demo``."""
