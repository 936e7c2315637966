"""Queues as rows (pause per queue), reruns linked to their original, the dashboard's proxy,
and on PostgreSQL GIN indexes so the admin's search by payload and metadata content (``@>``)
reads an index.

SQLite has no GIN: there the search scans the rows it filters (documented in the README).
"""

import django.db.models.deletion
import django.db.models.functions.datetime
from django.db import migrations, models

CREATE_SEARCH_INDEXES = """
CREATE INDEX IF NOT EXISTS taskqueue_task_payload_gin
    ON taskqueue_task USING gin (payload jsonb_path_ops);
CREATE INDEX IF NOT EXISTS taskqueue_task_metadata_gin
    ON taskqueue_task USING gin (metadata jsonb_path_ops);
"""

DROP_SEARCH_INDEXES = """
DROP INDEX IF EXISTS taskqueue_task_payload_gin;
DROP INDEX IF EXISTS taskqueue_task_metadata_gin;
"""


def create_search_indexes(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE_SEARCH_INDEXES)


def drop_search_indexes(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP_SEARCH_INDEXES)


class Migration(migrations.Migration):
    dependencies = [
        ("taskqueue", "0004_monitoring"),
    ]

    operations = [
        migrations.CreateModel(
            name="Queue",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("name", models.CharField(max_length=100, unique=True, verbose_name="name")),
                ("paused", models.BooleanField(default=False, verbose_name="paused")),
                (
                    "paused_at",
                    models.DateTimeField(blank=True, null=True, verbose_name="paused at"),
                ),
                (
                    "created_at",
                    models.DateTimeField(
                        db_default=django.db.models.functions.datetime.Now(),
                        verbose_name="created at",
                    ),
                ),
                (
                    "updated_at",
                    models.DateTimeField(
                        db_default=django.db.models.functions.datetime.Now(),
                        verbose_name="updated at",
                    ),
                ),
            ],
            options={
                "verbose_name": "queue",
                "verbose_name_plural": "queues",
                "ordering": ("name",),
            },
        ),
        migrations.CreateModel(
            name="Dashboard",
            fields=[],
            options={
                "verbose_name": "dashboard",
                "verbose_name_plural": "dashboard",
                "proxy": True,
                "default_permissions": (),
                "indexes": [],
                "constraints": [],
            },
            bases=("taskqueue.task",),
        ),
        migrations.AddField(
            model_name="task",
            name="rerun_of",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                related_name="reruns",
                to="taskqueue.task",
                verbose_name="rerun of",
            ),
        ),
        migrations.RunPython(create_search_indexes, drop_search_indexes),
    ]
