"""Settings for the worker subprocesses of tests/test_outbound.py and the heartbeat test of
tests/test_schedule_firing.py: the test settings, plus the outbound guard's settings read
from the environment (hosts comma-separated; private addresses allowed when "1")."""

import os

from tests.settings import *  # noqa: F403
from tests.settings import TASKQUEUE

TASKQUEUE = {
    **TASKQUEUE,
    "HEARTBEAT_HOSTS": [
        host for host in os.environ.get("TASKQUEUE_TEST_HEARTBEAT_HOSTS", "").split(",") if host
    ],
    "OUTBOUND_ALLOW_PRIVATE": os.environ.get("TASKQUEUE_TEST_ALLOW_PRIVATE") == "1",
}
