"""Stop the PostgreSQL sessions a killed handler left behind.

A handler process killed at its timeout may leave a query running in the server. Its
connections carry an ``application_name`` unique to the worker and the slot
(``taskqueue.worker.pools.sessions``), so exactly those sessions can be terminated. Each
alias is asked about its own database only: a worker of another project on the same server
with the same id is never touched.
"""

from __future__ import annotations

import logging

from django.db import DatabaseError, connections

logger = logging.getLogger("taskqueue.worker.pools.processes")


def terminate_sessions(name: str) -> None:
    """Terminate the sessions named ``name`` on every PostgreSQL alias (their query goes too)."""
    for alias in connections:
        connection = connections[alias]
        if connection.vendor != "postgresql":
            continue
        try:
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = %s AND datname = current_database()",
                    [name],
                )
        except DatabaseError:
            logger.warning(
                "could not stop the database sessions of %s on %r", name, alias, exc_info=True
            )
            connection.close()
