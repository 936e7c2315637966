from django.apps import AppConfig
from django.dispatch import Signal
from django.utils.module_loading import autodiscover_modules
from django.utils.translation import gettext_lazy as _

from taskqueue import signals
from taskqueue.events import register_builtin
from taskqueue.monitoring.logging import log_event, wants_event


class TaskqueueConfig(AppConfig):
    name = "taskqueue"
    verbose_name = _("Task queue")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Like admin.py: every installed app's tasks.py registers its handlers. No database
        # work here.
        # Registers the system checks; they read models (alerts), not ready at import time.
        from taskqueue import checks  # noqa: F401

        # Prune imports the store, which imports models: loadable only once they are ready.
        from taskqueue.builtins.prune import register_retention

        # Built in, so every worker serves it whatever the project's own handlers are.
        register_retention()
        _connect_event_receivers()
        # Alerts import models, which are not ready when this module is imported.
        from taskqueue.monitoring import alerts

        alerts.connect()  # mail and webhook alerts; idle unless ADMINS or a webhook is set
        autodiscover_modules("tasks")


def _connect_event_receivers() -> None:
    """The built-in receivers of every lifecycle signal: the structured log record and the
    live stream's recorder. Each returns at once when its setting turns it off."""
    # The stream imports models, which are not ready when this module is imported.
    from taskqueue.monitoring.stream import record_event, wants_severity

    register_builtin("taskqueue.monitoring.logging", wants_event)
    register_builtin("taskqueue.monitoring.stream", wants_severity)
    for value in vars(signals).values():
        if isinstance(value, Signal):
            # dispatch_uid: ready() may run twice (tests), and each event is logged once.
            value.connect(log_event, dispatch_uid="taskqueue.monitoring.logging")
            value.connect(record_event, dispatch_uid="taskqueue.monitoring.stream")
