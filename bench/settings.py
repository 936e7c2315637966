"""Django settings for the benchmark and the worker subprocesses it starts.

The database comes from the environment, which ``bench/run.py`` sets before starting
anything: ``TASKQUEUE_BENCH_SQLITE`` (a file path) selects SQLite; otherwise PostgreSQL from
``TASKQUEUE_BENCH_DATABASE_URL`` or the usual ``PG*`` variables, database ``taskqueue_bench``.
"""

import os
from urllib.parse import unquote, urlsplit

SECRET_KEY = "taskqueue-bench-not-secret"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
ALLOWED_HOSTS: list[str] = []
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "taskqueue",
    "bench.benchapp",
]

DEFAULT_DATABASE_NAME = "taskqueue_bench"


def postgres_settings() -> dict[str, object]:
    """The PostgreSQL connection, from a URL if given, else from the ``PG*`` variables."""
    url = os.environ.get("TASKQUEUE_BENCH_DATABASE_URL")
    if url:
        parts = urlsplit(url)
        if parts.scheme not in ("postgres", "postgresql"):
            raise RuntimeError(f"--database-url must be a postgres:// URL, not {url!r}")
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": unquote(parts.path.lstrip("/")) or DEFAULT_DATABASE_NAME,
            "USER": unquote(parts.username or "postgres"),
            "PASSWORD": unquote(parts.password or ""),
            "HOST": parts.hostname or "127.0.0.1",
            "PORT": str(parts.port or 5432),
        }
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": os.environ.get("PGDATABASE", DEFAULT_DATABASE_NAME),
        "USER": os.environ.get("PGUSER", "postgres"),
        "PASSWORD": os.environ.get("PGPASSWORD", ""),
        "HOST": os.environ.get("PGHOST", "127.0.0.1"),
        "PORT": os.environ.get("PGPORT", "5432"),
    }


SQLITE_PATH = os.environ.get("TASKQUEUE_BENCH_SQLITE")
if SQLITE_PATH:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": SQLITE_PATH,
            # The settings the docs recommend for a SQLite queue: WAL, and write locks taken
            # at BEGIN so a claim never deadlocks upgrading a read lock.
            "OPTIONS": {
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
                "transaction_mode": "IMMEDIATE",
                "timeout": 30,
            },
        }
    }
else:
    DATABASES = {"default": postgres_settings()}

# The library's defaults (concurrency 4, poll interval 1 s, ...): measure what users get.
TASKQUEUE: dict[str, object] = {}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"taskqueue": {"handlers": ["console"], "level": "WARNING"}},
}
