"""The taskqueue admin: tasks, dead letters, task types and workers on ``admin.site``.

``admin.autodiscover()`` imports this package; importing the modules registers them.
"""

from taskqueue.admin import dead_letters, schedules, task_types, tasks, workers, workflows

__all__ = ["dead_letters", "schedules", "task_types", "tasks", "workers", "workflows"]
