"""URLs of the example project: the admin, and the demo's index page."""

from django.contrib import admin
from django.urls import include, path

from example_project.demo import views

urlpatterns = [
    path("", views.index, name="index"),
    path("enqueue-demo-batch/", views.enqueue_demo_batch, name="enqueue-demo-batch"),
    path("admin/", admin.site.urls),
    path("taskqueue/", include("taskqueue.urls")),
]
