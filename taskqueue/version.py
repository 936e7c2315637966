"""The package version, in a module of its own so that anything may read it (the heartbeat
pinger's User-Agent) without importing the public API and everything it pulls in."""

__version__ = "0.1.0"
