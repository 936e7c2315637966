"""The admin's dashboard page, as a model the admin can register a page on."""

from __future__ import annotations

from django.utils.translation import gettext_lazy as _

from taskqueue.models.tasks import Task


class Dashboard(Task):
    """No table of its own: a proxy, so the dashboard is listed in the admin index beside the
    queue's models and lives at ``admin/taskqueue/dashboard/``. Seeing it takes
    ``taskqueue.view_task``, not a permission of its own."""

    class Meta:
        proxy = True
        verbose_name = _("dashboard")
        verbose_name_plural = _("dashboard")
        default_permissions = ()
