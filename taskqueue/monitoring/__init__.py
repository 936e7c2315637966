"""Monitoring: metrics the workers record, stats and health computed from the database,
Prometheus metrics, the live event stream and alerts."""
