"""Core rules every layer shares.

The handler registry, retry strategies, payload and option limits, priorities and the
outbound guard.
"""
