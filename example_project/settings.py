"""Settings of the example project, read from the environment with django-environ.

With no environment at all it runs as a local demo: DEBUG on, a throwaway secret key, and a
SQLite database in ``var/`` at the repository root. Point ``DATABASE_URL`` at PostgreSQL
(``postgres://user:password@host:5432/name``) for anything more.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()

DEBUG = env.bool("DEBUG", default=True)
SECRET_KEY = env.str("SECRET_KEY", default="django-insecure-taskqueue-example-dev-only-key")
# Empty means Django's own DEBUG default (localhost only); set it when DEBUG is off.
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "taskqueue",
    "example_project.demo",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "example_project.urls"
WSGI_APPLICATION = "example_project.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
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

# --- database ------------------------------------------------------------------------------

DEFAULT_SQLITE_PATH = BASE_DIR / "var" / "example.sqlite3"
DATABASES = {"default": env.db_url("DATABASE_URL", default=f"sqlite:///{DEFAULT_SQLITE_PATH}")}

if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # WAL lets the web server read while a worker writes; IMMEDIATE takes the write lock at
    # BEGIN, so two writers queue up on the timeout instead of failing mid-transaction.
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
        **DATABASES["default"].get("OPTIONS", {}),
    }
    sqlite_name = str(DATABASES["default"]["NAME"])
    if sqlite_name and sqlite_name != ":memory:":
        # SQLite creates the file but not its directory (var/ on a fresh clone).
        Path(sqlite_name).parent.mkdir(parents=True, exist_ok=True)
else:
    DATABASES["default"]["CONN_MAX_AGE"] = env.int("CONN_MAX_AGE", default=0)
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- taskqueue -----------------------------------------------------------------------------


def _queue_list(raw: str) -> list[str]:
    return [queue.strip() for queue in raw.split(",") if queue.strip()]


# TASKQUEUE_<NAME> environment variable -> how to read it. Unset variables are left out, so
# taskqueue's own defaults apply; ``manage.py check`` validates whatever is set.
TASKQUEUE_ENVIRONMENT: dict[str, Callable[[str], Any]] = {
    "DATABASE": str,
    "QUEUES": _queue_list,
    "CONCURRENCY": int,
    "POOL": str,
    "POLL_INTERVAL": float,
    "HEARTBEAT_INTERVAL": float,
    "STALE_AFTER": float,
    "RESCUE_INTERVAL": float,
    "SHUTDOWN_TIMEOUT": float,
    "MAX_ATTEMPTS": int,
    "DEFAULT_TIMEOUT": float,
    "MAX_PAYLOAD_BYTES": int,
    "MAX_MEMORY": float,
}


def taskqueue_settings_from_environment() -> dict[str, Any]:
    """Build ``TASKQUEUE`` from the ``TASKQUEUE_*`` variables that are set."""
    configured: dict[str, Any] = {}
    for name, read in TASKQUEUE_ENVIRONMENT.items():
        variable = f"TASKQUEUE_{name}"
        if variable not in os.environ:
            continue
        raw = env.str(variable)
        try:
            configured[name] = read(raw)
        except ValueError:
            kind = "an integer" if read is int else "a number"
            raise ImproperlyConfigured(f"{variable}={raw!r} must be {kind}") from None
    return configured


TASKQUEUE = taskqueue_settings_from_environment()

# --- the rest ------------------------------------------------------------------------------

LANGUAGE_CODE = "en-us"
TIME_ZONE = env.str("TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "var" / "static"

LOGIN_URL = "admin:login"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "console": {
            "format": "%(asctime)s %(levelname)-7s %(name)s: %(message)s",
            "datefmt": "%H:%M:%S",
        }
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "console"}},
    "loggers": {
        # The worker's start, stop, retry and dead-letter lines.
        "taskqueue": {
            "handlers": ["console"],
            "level": env.str("TASKQUEUE_LOG_LEVEL", default="INFO"),
            "propagate": False,
        },
        "example_project": {"handlers": ["console"], "level": "INFO", "propagate": False},
    },
}
