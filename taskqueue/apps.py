from django.apps import AppConfig
from django.utils.module_loading import autodiscover_modules
from django.utils.translation import gettext_lazy as _


class TaskqueueConfig(AppConfig):
    name = "taskqueue"
    verbose_name = _("Task queue")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Like admin.py: every installed app's tasks.py registers its handlers. No database
        # work here.
        from taskqueue import checks  # noqa: F401 - registers the system checks
        from taskqueue.retention import register_retention

        # Built in, so every worker serves it whatever the project's own handlers are.
        register_retention()
        autodiscover_modules("tasks")
