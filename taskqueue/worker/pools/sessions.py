"""The database sessions of a handler slot: a name unique to the worker and the slot.

A handler killed at its timeout may leave a query running in PostgreSQL. Each slot's
connections carry an ``application_name`` unique to the worker and the slot, so the worker
can terminate exactly that slot's sessions and no other
(``taskqueue.store.backends.terminate_sessions``).
"""

from __future__ import annotations

import hashlib
import logging

logger = logging.getLogger("taskqueue.worker.pools.processes")

# PostgreSQL keeps NAMEDATALEN - 1 bytes of an application_name and shows any character
# outside printable ASCII as something else ("?" or an escape): a name longer than this or
# not plain ASCII would not match what terminate_sessions looks for, or would match a
# neighbour's.
APPLICATION_NAME_BYTES = 63
APPLICATION_NAME_PREFIX = "taskqueue:"
APPLICATION_NAME_HASH_CHARS = 12


def application_name(worker_id: str, slot: int) -> str:
    """The PostgreSQL application_name of a child's connections: one per worker id and slot."""
    ending = f":{slot}"
    readable = "".join(char if " " <= char <= "~" else "_" for char in worker_id)
    name = f"{APPLICATION_NAME_PREFIX}{readable}{ending}"
    if readable == worker_id and len(name) <= APPLICATION_NAME_BYTES:
        return name
    # Too long or not plain ASCII: a readable head of the id, then a hash of all of it, so
    # ids that share their first characters still name different sessions.
    digest = hashlib.sha256(worker_id.encode("utf-8", "surrogatepass")).hexdigest()
    tail = f"~{digest[:APPLICATION_NAME_HASH_CHARS]}{ending}"
    room = max(APPLICATION_NAME_BYTES - len(APPLICATION_NAME_PREFIX) - len(tail), 0)
    return f"{APPLICATION_NAME_PREFIX}{readable[:room]}{tail}"
