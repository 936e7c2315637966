"""Settings for the test suite: SQLite by default, PostgreSQL with TASKQUEUE_TEST_DB=postgres.

Worker subprocesses started by the tests use these settings too; they find the test
database through TASKQUEUE_TEST_DB_NAME, which the test fixtures set.
"""

import os
import tempfile
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = "taskqueue-tests-not-secret"
# Worker subprocesses of the memory test run with DEBUG=True, which logs every query.
DEBUG = os.environ.get("TASKQUEUE_TEST_DEBUG") == "1"
USE_TZ = True
TIME_ZONE = "UTC"
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "tests.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
STATIC_URL = "/static/"
# Tests create many users: skip the deliberately slow production hasher.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "taskqueue",
    "tests.testapp",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

DB_KIND = os.environ.get("TASKQUEUE_TEST_DB", "sqlite")
# Set for worker subprocesses: the test database the fixtures created.
TEST_DB_NAME = os.environ.get("TASKQUEUE_TEST_DB_NAME")

if DB_KIND == "postgres":
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": TEST_DB_NAME or os.environ.get("PGDATABASE", "taskqueue"),
            "USER": os.environ.get("PGUSER", "postgres"),
            "PASSWORD": os.environ.get("PGPASSWORD", ""),
            "HOST": os.environ.get("PGHOST", "127.0.0.1"),
            "PORT": os.environ.get("PGPORT", "5432"),
            # One test database per pytest process, so parallel runs never collide.
            "TEST": {"NAME": f"test_taskqueue_{os.getpid()}"},
        }
    }
elif DB_KIND == "sqlite":
    # A file, not memory: worker subprocesses and threads must see the same database.
    sqlite_dir = Path(os.environ.get("TASKQUEUE_TEST_SQLITE_DIR", tempfile.gettempdir()))
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": TEST_DB_NAME or str(sqlite_dir / "taskqueue-dev.sqlite3"),
            "OPTIONS": {
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
                "transaction_mode": "IMMEDIATE",
                "timeout": 30,
            },
            "TEST": {"NAME": str(sqlite_dir / f"taskqueue-test-{os.getpid()}.sqlite3")},
        }
    }
else:
    raise RuntimeError(f"TASKQUEUE_TEST_DB must be 'sqlite' or 'postgres', not {DB_KIND!r}")

TASKQUEUE = {
    # Two handler slots: every worker in the tests starts two child processes.
    "CONCURRENCY": 2,
    "POLL_INTERVAL": 0.1,
    "HEARTBEAT_INTERVAL": 1,
    "STALE_AFTER": 3,
    "RESCUE_INTERVAL": 0.5,
    "SHUTDOWN_TIMEOUT": 10,
    # Cancellation tests give the worker subprocesses a short grace through the environment.
    "CANCEL_GRACE": float(os.environ.get("TASKQUEUE_TEST_CANCEL_GRACE", "10")),
    # No built-in retention schedule: it would fire a prune task into tests that count
    # tasks exactly whenever one crosses a quarter hour (tests/test_retention.py turns it on).
    "RETENTION": {"cron": None},
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"taskqueue": {"handlers": ["console"], "level": "WARNING"}},
}
