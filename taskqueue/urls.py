"""Monitoring URLs: ``path("taskqueue/", include("taskqueue.urls"))`` in the project."""

from django.urls import path

from taskqueue import views
from taskqueue.monitoring.stream import event_stream

app_name = "taskqueue"

urlpatterns = [
    path("stats/", views.stats_view, name="stats"),
    path("health/", views.health_view, name="health"),
    path("events/", event_stream, name="events"),
    path("metrics/", views.metrics_view, name="metrics"),
]
