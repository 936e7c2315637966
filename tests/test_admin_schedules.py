"""The Schedule admin: the form's validation, declared schedules read-only, actions and
permissions, escaping."""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse

from taskqueue.models import Schedule, ScheduleSource, Task

pytestmark = pytest.mark.django_db

SCRIPT = "<script>alert(1)</script>"
ESCAPED_SCRIPT = "&lt;script&gt;alert(1)&lt;/script&gt;"
LIST_URL = reverse("admin:taskqueue_schedule_changelist")
ADD_URL = reverse("admin:taskqueue_schedule_add")
VALID = {
    "name": "nightly",
    "task_type": "schedule_tick",
    "cron": "0 3 * * *",
    "timezone": "Europe/Paris",
    "payload": '{"label": "night"}',
    "queue": "",
    "priority": "",
    "catch_up": "once",
    "grace": "",
    "heartbeat_url": "",
    "description": "",
    "enabled": "on",
}


def change_url(schedule: Schedule) -> str:
    return reverse("admin:taskqueue_schedule_change", args=[schedule.pk])


def make(name: str = "every-minute", **fields: Any) -> Schedule:
    fields.setdefault("task_type", "schedule_tick")
    fields.setdefault("cron", "* * * * *")
    return Schedule.objects.create(name=name, **fields)


def run_action(client: Any, action: str, objects: list[Schedule]) -> Any:
    data = {"action": action, "_selected_action": [str(obj.pk) for obj in objects]}
    return client.post(LIST_URL, data, follow=True)


def messages_of(response: Any) -> list[str]:
    return [str(message) for message in response.context["messages"]]


@pytest.fixture
def staff_client(client: Any, django_user_model: Any) -> Any:
    """Log in a staff user holding exactly the given taskqueue permissions."""

    def login(*codenames: str) -> Any:
        user = django_user_model.objects.create_user("staff", password=None, is_staff=True)
        perms = Permission.objects.filter(
            content_type__app_label="taskqueue", codename__in=codenames
        )
        assert perms.count() == len(codenames)
        user.user_permissions.add(*perms)
        client.force_login(user)
        return client

    return login


# --- the form -------------------------------------------------------------------------------


def test_staff_create_a_schedule_that_starts_at_its_next_slot(admin_client: Any) -> None:
    response = admin_client.post(ADD_URL, VALID)
    assert response.status_code == 302, response.context["adminform"].form.errors
    schedule = Schedule.objects.get(name="nightly")
    assert schedule.source == ScheduleSource.ADMIN
    assert schedule.payload == {"label": "night"}
    assert schedule.next_run_at is not None
    local = schedule.next_run_at.astimezone(ZoneInfo("Europe/Paris"))
    assert (local.hour, local.minute) == (3, 0)


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("cron", "0 3 * *", "invalid cron expression &#x27;0 3 * *&#x27;"),
        ("cron", "0 0 30 2 *", "never matches a date"),
        ("timezone", "Europe/Pariss", "unknown time zone"),
        ("task_type", "not-a-handler", "No handler is registered for task type"),
        ("payload", "[1, 2]", "payload must be a dict"),
        ("payload", '{"nope": 1}', "payload does not match handler"),
        ("heartbeat_url", "file:///etc/passwd", "must be an http:// or https:// URL"),
        ("queue", "bad queue", "invalid queue name"),
        ("priority", "500", "out of range"),
        ("grace", "-5", "grace must be a positive number"),
    ],
)
def test_the_form_rejects_bad_input_naming_the_problem(
    admin_client: Any, field: str, value: str, fragment: str
) -> None:
    response = admin_client.post(ADD_URL, {**VALID, field: value})
    assert response.status_code == 200
    assert fragment in response.content.decode()
    assert field in response.context["adminform"].form.errors
    assert not Schedule.objects.exists()


def test_changing_the_cron_moves_the_next_run(admin_client: Any) -> None:
    admin_client.post(ADD_URL, VALID)
    schedule = Schedule.objects.get()
    before = schedule.next_run_at
    response = admin_client.post(change_url(schedule), {**VALID, "cron": "* * * * * *"})
    assert response.status_code == 302
    schedule.refresh_from_db()
    assert schedule.cron == "* * * * * *"
    assert schedule.next_run_at < before


def test_declared_schedules_are_read_only_except_enabled(admin_client: Any) -> None:
    schedule = make("from-code", source=ScheduleSource.CODE)
    page = admin_client.get(change_url(schedule))
    assert page.status_code == 200
    assert list(page.context["adminform"].form.fields) == ["enabled"]
    # A posted definition is ignored; unticking "enabled" pauses it.
    posted = {key: value for key, value in VALID.items() if key != "enabled"}
    response = admin_client.post(change_url(schedule), {**posted, "cron": "0 0 * * *"})
    assert response.status_code == 302
    schedule.refresh_from_db()
    assert (schedule.cron, schedule.enabled) == ("* * * * *", False)
    # Deleting it would only last until the next worker start.
    delete_url = reverse("admin:taskqueue_schedule_delete", args=[schedule.pk])
    assert admin_client.post(delete_url, {"post": "yes"}).status_code == 403
    response = admin_client.post(
        LIST_URL,
        {"action": "delete_selected", "_selected_action": [str(schedule.pk)], "post": "yes"},
    )
    assert response.status_code == 403
    assert Schedule.objects.filter(pk=schedule.pk).exists()
    # Admin-made schedules can be deleted.
    mine = make("mine")
    response = admin_client.post(
        LIST_URL,
        {"action": "delete_selected", "_selected_action": [str(mine.pk)], "post": "yes"},
    )
    assert response.status_code == 302
    assert not Schedule.objects.filter(pk=mine.pk).exists()


def test_pages_render_and_escape_schedule_data(admin_client: Any) -> None:
    schedule = make(SCRIPT, description=SCRIPT, payload={"label": SCRIPT})
    make("late-one", grace=1, source=ScheduleSource.SETTINGS)
    Schedule.objects.filter(name="late-one").update(
        created_at="2000-01-01T00:00:00Z", updated_at="2000-01-01T00:00:00Z"
    )
    for url in (LIST_URL, change_url(schedule), ADD_URL):
        response = admin_client.get(url)
        assert response.status_code == 200, url
        content = response.content.decode()
        assert SCRIPT not in content
    listing = admin_client.get(LIST_URL).content.decode()
    assert ESCAPED_SCRIPT in listing
    assert "icon-yes.svg" in listing  # the late one, flagged
    found = admin_client.get(LIST_URL, {"q": "late-one"}).content.decode()
    assert "late-one" in found and ESCAPED_SCRIPT not in found


# --- actions and permissions ----------------------------------------------------------------


def test_pause_resume_and_run_now(admin_client: Any) -> None:
    schedule = make()
    response = run_action(admin_client, "pause_schedules", [schedule])
    assert messages_of(response) == ["Paused 1 schedule."]
    schedule.refresh_from_db()
    assert schedule.enabled is False

    response = run_action(admin_client, "resume_schedules", [schedule])
    assert messages_of(response) == ["Resumed 1 schedule from its next slot."]
    schedule.refresh_from_db()
    assert schedule.enabled is True and schedule.next_run_at is not None

    response = run_action(admin_client, "run_schedules_now", [schedule])
    assert messages_of(response) == ["Enqueued 1 task now."]
    task = Task.objects.get(schedule=schedule)
    assert task.schedule_slot is None
    assert task.created_by is not None


def test_run_now_reports_a_schedule_that_cannot_run(admin_client: Any) -> None:
    schedule = make("orphan", task_type="gone-handler")
    response = run_action(admin_client, "run_schedules_now", [schedule])
    (message,) = messages_of(response)
    assert "Enqueued 0 tasks now." in message
    assert "orphan: no handler is registered for task type 'gone-handler'" in message


def test_actions_need_the_change_permission(staff_client: Any) -> None:
    schedule = make()
    viewer = staff_client("view_schedule")
    assert viewer.get(LIST_URL).context["action_form"] is None
    run_action(viewer, "pause_schedules", [schedule])
    run_action(viewer, "run_schedules_now", [schedule])
    schedule.refresh_from_db()
    assert schedule.enabled is True
    assert not Task.objects.exists()
    assert viewer.post(ADD_URL, VALID).status_code == 403


def test_change_permission_allows_the_actions(staff_client: Any) -> None:
    schedule = make()
    editor = staff_client("view_schedule", "change_schedule")
    response = run_action(editor, "pause_schedules", [schedule])
    assert messages_of(response) == ["Paused 1 schedule."]
    schedule.refresh_from_db()
    assert schedule.enabled is False
