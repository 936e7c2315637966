"""On PostgreSQL, NOTIFY listening workers from the inserting transaction.

A statement-level trigger sends one notification per queue per statement, delivered when the
transaction commits and never for a rolled-back insert; it also covers bulk inserts and rows
written by other clients. SQLite has no NOTIFY: workers poll there.
"""

from django.db import migrations

CREATE = """
CREATE OR REPLACE FUNCTION taskqueue_notify_new_tasks() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('taskqueue', queue)
    FROM (
        SELECT DISTINCT queue FROM taskqueue_new_tasks
        WHERE status IN ('pending', 'scheduled', 'retrying') AND run_at <= statement_timestamp()
    ) AS due;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER taskqueue_task_notify
AFTER INSERT ON taskqueue_task
REFERENCING NEW TABLE AS taskqueue_new_tasks
FOR EACH STATEMENT EXECUTE FUNCTION taskqueue_notify_new_tasks();
"""

DROP = """
DROP TRIGGER IF EXISTS taskqueue_task_notify ON taskqueue_task;
DROP FUNCTION IF EXISTS taskqueue_notify_new_tasks();
"""


def create_trigger(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE)


def drop_trigger(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP)


class Migration(migrations.Migration):
    dependencies = [("taskqueue", "0001_initial")]

    operations = [migrations.RunPython(create_trigger, drop_trigger)]
