"""What each door into a schedule refuses: heartbeat URLs (the admin form against the allow-
list and the address rule, code and settings declarations by shape only) and NUL characters
in payloads (the decorator, the settings and the admin form)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings
from django.urls import reverse

import taskqueue
from taskqueue.core.registry import registry
from taskqueue.models import Schedule
from taskqueue.schedules import heartbeats
from taskqueue.schedules.declarations import declarations, settings_declarations

ADD_URL = reverse("admin:taskqueue_schedule_add")
HOSTS = "TASKQUEUE['HEARTBEAT_HOSTS']"
FORM = {
    "name": "nightly",
    "task_type": "schedule_tick",
    "cron": "0 3 * * *",
    "timezone": "UTC",
    "payload": '{"label": "night"}',
    "queue": "",
    "priority": "",
    "catch_up": "once",
    "grace": "",
    "heartbeat_url": "",
    "description": "",
    "enabled": "on",
}


@pytest.fixture
def no_declarations() -> Iterator[None]:
    with declarations.override():
        yield


def outbound_settings(hosts: Any, allow_private: bool = False, **more: Any) -> override_settings:
    return override_settings(
        TASKQUEUE={
            **settings.TASKQUEUE,
            "HEARTBEAT_HOSTS": hosts,
            "OUTBOUND_ALLOW_PRIVATE": allow_private,
            **more,
        }
    )


def form_error(client: Any, field: str, **values: str) -> str:
    before = Schedule.objects.count()
    response = client.post(ADD_URL, {**FORM, **values})
    assert response.status_code == 200, "the form was accepted"
    assert Schedule.objects.count() == before
    errors = response.context["adminform"].form.errors
    assert list(errors) == [field], errors
    return " ".join(errors[field])


# --- heartbeat URLs in the admin form -------------------------------------------------------


@pytest.mark.django_db
def test_the_form_refuses_a_host_that_is_not_allowed(admin_client: Any) -> None:
    with outbound_settings([]):
        message = form_error(admin_client, "heartbeat_url", heartbeat_url="https://evil.test/x")
    assert message == (
        f"heartbeat_url host 'evil.test' is not allowed: add 'evil.test' to {HOSTS} (now empty)"
    )
    with outbound_settings(["hc-ping.com", "*.example.com"]):
        message = form_error(
            admin_client, "heartbeat_url", heartbeat_url="https://a.b.example.org/ping"
        )
    assert message == (
        "heartbeat_url host 'a.b.example.org' is not allowed: add 'a.b.example.org' (or a "
        f"'*.b.example.org' wildcard) to {HOSTS} (now hc-ping.com, *.example.com)"
    )


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "http://localhost:8000/ping",
            "heartbeat_url host 'localhost' resolves to 127.0.0.1, a loopback address, which "
            "taskqueue refuses; set TASKQUEUE['OUTBOUND_ALLOW_PRIVATE'] = True to allow private "
            "and loopback addresses",
        ),
        (
            "http://10.1.2.3/ping",
            "heartbeat_url host '10.1.2.3' is a private address, which taskqueue refuses; set "
            "TASKQUEUE['OUTBOUND_ALLOW_PRIVATE'] = True to allow private and loopback addresses",
        ),
        (
            "http://169.254.169.254/latest/meta-data/",
            "heartbeat_url host '169.254.169.254' is a cloud metadata service address, which "
            "taskqueue refuses",
        ),
    ],
)
def test_the_form_refuses_a_private_address_even_on_an_allowed_host(
    admin_client: Any, url: str, expected: str
) -> None:
    with outbound_settings(["localhost", "10.1.2.3", "169.254.169.254"]):
        assert form_error(admin_client, "heartbeat_url", heartbeat_url=url) == expected


@pytest.mark.django_db
def test_the_form_accepts_an_allowed_host(admin_client: Any) -> None:
    # An IP literal needs no DNS, so the test runs offline.
    with outbound_settings(["8.8.8.8"]):
        response = admin_client.post(ADD_URL, {**FORM, "heartbeat_url": "https://8.8.8.8/p/abc"})
    assert response.status_code == 302
    assert Schedule.objects.get().heartbeat_url == "https://8.8.8.8/p/abc"


@pytest.mark.django_db
def test_allowing_private_addresses_lets_the_form_accept_a_local_monitor(
    admin_client: Any,
) -> None:
    with outbound_settings(["localhost"], allow_private=True):
        response = admin_client.post(
            ADD_URL, {**FORM, "heartbeat_url": "http://localhost:8000/ping"}
        )
    assert response.status_code == 302
    # Metadata and link-local addresses stay refused.
    with outbound_settings(["169.254.169.254"], allow_private=True):
        message = form_error(
            admin_client, "heartbeat_url", name="other", heartbeat_url="http://169.254.169.254/"
        )
    assert "is a cloud metadata service address" in message


@pytest.mark.django_db
def test_the_form_names_a_bad_allow_list_setting(admin_client: Any) -> None:
    with outbound_settings("hc-ping.com"):
        message = form_error(admin_client, "heartbeat_url", heartbeat_url="https://hc-ping.com/")
    assert message == (
        f"heartbeat URLs cannot be checked: {HOSTS} must be a list of host names "
        "('hc-ping.com', '*.example.com', an IP address), got str"
    )


@pytest.mark.django_db
def test_the_form_refuses_credentials_in_the_url(admin_client: Any) -> None:
    with outbound_settings(["8.8.8.8"]):
        message = form_error(
            admin_client, "heartbeat_url", heartbeat_url="https://user:pw@8.8.8.8/ping"
        )
    assert message.startswith("heartbeat_url carries credentials before the host '8.8.8.8'")


# --- heartbeat URLs declared by developers ---------------------------------------------------


def test_declared_heartbeat_urls_may_name_any_host(no_declarations: None) -> None:
    in_settings = {
        "nightly": {
            "task": "inputs_monitored",
            "cron": "0 3 * * *",
            "heartbeat_url": "http://10.0.0.5:8080/ping",
        }
    }
    with registry.override(), outbound_settings(["hc-ping.com"], SCHEDULES=in_settings):

        @taskqueue.periodic("0 3 * * *", heartbeat_url="https://hc.example.net/ping/abc")
        @taskqueue.handler("inputs_monitored")
        def monitored() -> None: ...

        valid, problems = settings_declarations(in_settings)
        assert problems == []
        assert valid[0].heartbeat_url == "http://10.0.0.5:8080/ping"
        allowed = heartbeats.allowed_hosts()
    # Declared hosts join HEARTBEAT_HOSTS at fetch time (addresses are still judged there).
    for host in ("hc.example.net", "10.0.0.5", "hc-ping.com"):
        assert allowed.allows(host), host
    assert not allowed.allows("other.example.net")


def test_declared_heartbeat_urls_are_still_checked_for_shape(no_declarations: None) -> None:
    with pytest.raises(ImproperlyConfigured, match="carries credentials before the host"):
        taskqueue.periodic("0 3 * * *", heartbeat_url="https://u:p@hc.example.net/ping")
    valid, problems = settings_declarations(
        {"nightly": {"task": "echo", "cron": "0 3 * * *", "heartbeat_url": "http://u@h.net/"}}
    )
    assert valid == []
    assert problems == [
        (
            "nightly",
            "is invalid: heartbeat_url carries credentials before the host 'h.net'; they are "
            "not supported (put a token in the path or query instead)",
        )
    ]


def test_messages_about_a_declared_url_never_show_its_path(no_declarations: None) -> None:
    # Monitors keep their secret in the path (https://hc-ping.com/<uuid>).
    _, problems = settings_declarations(
        {"nightly": {"task": "echo", "cron": "0 3 * * *", "heartbeat_url": "hc-ping.com/s3cr3t"}}
    )
    assert problems == [
        (
            "nightly",
            "is invalid: heartbeat_url must be an http:// or https:// URL, got 'hc-ping.com/...'",
        )
    ]
    with pytest.raises(ImproperlyConfigured) as refused:
        taskqueue.periodic("0 3 * * *", heartbeat_url="ftp://hc-ping.com/s3cr3t")
    assert "got 'ftp://hc-ping.com/...'" in str(refused.value)
    assert "s3cr3t" not in str(refused.value)


# --- NUL characters in payloads ------------------------------------------------------------

NUL_PROBLEM = "payload['label'] contains a NUL character (\\x00) at position 1"


def test_the_decorator_refuses_a_nul_in_the_payload(no_declarations: None) -> None:
    with pytest.raises(ImproperlyConfigured) as refused:
        taskqueue.periodic("0 3 * * *", payload={"label": "a\x00b"})
    assert NUL_PROBLEM in str(refused.value)
    assert str(refused.value).startswith("@taskqueue.periodic('0 3 * * *'): ")


def test_settings_refuse_a_nul_in_the_payload() -> None:
    valid, problems = settings_declarations(
        {"nightly": {"task": "schedule_tick", "cron": "0 3 * * *", "payload": {"label": "a\x00b"}}}
    )
    assert valid == []
    assert problems == [("nightly", f"is invalid: {NUL_PROBLEM}, which the database cannot store")]
    _, key_problems = settings_declarations(
        {"nightly": {"task": "schedule_tick", "cron": "0 3 * * *", "payload": {"a\x00": 1}}}
    )
    assert "has a key 'a\\x00' that contains a NUL character" in key_problems[0][1]


@pytest.mark.django_db
def test_the_admin_form_refuses_a_nul_in_the_payload(admin_client: Any) -> None:
    # Escaped in the JSON text, the NUL reaches taskqueue's own check.
    message = form_error(admin_client, "payload", payload='{"label": "a\\u0000b"}')
    assert message == f"{NUL_PROBLEM}, which the database cannot store"
    # A raw NUL in the posted text is not valid JSON: Django's form field stops it first.
    assert form_error(admin_client, "payload", payload='{"label": "a\x00b"}') == (
        "Enter a valid JSON."
    )
