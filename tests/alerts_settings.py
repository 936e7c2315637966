"""Settings for the worker subprocesses of tests/test_alerts.py: the test settings, plus
ADMINS, a file mail backend (the test reads the files) and the webhook the test serves."""

import os

from tests.settings import *  # noqa: F403
from tests.settings import TASKQUEUE

ADMINS = [("Ops", "ops@example.com")]
EMAIL_BACKEND = "django.core.mail.backends.filebased.EmailBackend"
EMAIL_FILE_PATH = os.environ["TASKQUEUE_TEST_MAIL_DIR"]
TASKQUEUE = {
    **TASKQUEUE,
    "ALERTS": {"WEBHOOK_URL": os.environ.get("TASKQUEUE_TEST_WEBHOOK_URL") or None},
}
