"""The demo's index page: queue counts, recent tasks, and a button that enqueues a batch."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.admin.views.decorators import staff_member_required
from django.db.models import Count
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import NoReverseMatch, reverse
from django.views.decorators.http import require_GET, require_POST

from taskqueue.conf import settings as tq_settings
from taskqueue.models import Task, TaskStatus

from .batches import enqueue_first_batch

RECENT_TASKS = 10


def _admin_url(name: str) -> str | None:
    try:
        return reverse(name)
    except NoReverseMatch:
        return None


@require_GET
def index(request: HttpRequest) -> HttpResponse:
    """Show how many tasks are in each state and the latest few."""
    tasks = Task.objects.using(tq_settings.DATABASE)
    counts = dict(tasks.values_list("status").annotate(n=Count("id")).order_by())
    context = {
        "counts": [(label, counts.get(value, 0)) for value, label in TaskStatus.choices],
        "recent": tasks.order_by("-created_at")[:RECENT_TASKS],
        "admin_url": reverse("admin:index"),
        "tasks_url": _admin_url("admin:taskqueue_task_changelist"),
        "dead_letters_url": _admin_url("admin:taskqueue_deadletter_changelist"),
    }
    return render(request, "demo/index.html", context)


@require_POST
@staff_member_required
def enqueue_demo_batch(request: HttpRequest) -> HttpResponse:
    """Enqueue the demo batch on behalf of the logged-in staff user."""
    tasks = enqueue_first_batch(created_by=request.user)
    messages.success(request, f"Enqueued {len(tasks)} demo tasks.")
    return HttpResponseRedirect(reverse("index"))
