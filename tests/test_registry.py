"""Handler specs and the registry: option validation, duplicates, lookups and the test override."""

from __future__ import annotations

import inspect

import pytest
from django.core.exceptions import ImproperlyConfigured

import taskqueue
from taskqueue.core.registry import (
    HandlerSpec,
    Registry,
    build_spec,
    registry,
    validate_max_attempts,
    validate_queue_name,
    validate_timeout,
)
from taskqueue.exceptions import InvalidTaskOption, UnknownTaskType


def send(to: str, subject: str = "") -> str:
    return f"{to}:{subject}"


def other_send(to: str) -> str:
    return to


def needs_context(ctx: taskqueue.TaskContext, label: str) -> str:
    return label


def no_parameters() -> None:
    return None


async def send_async(to: str) -> str:
    return to


def test_build_spec_applies_and_normalises_every_option() -> None:
    strategy = taskqueue.Linear(base=1, step=2, max_delay=10)
    spec = build_spec(
        "email",
        send,
        queue="emails",
        priority="high",
        max_attempts=5,
        retry=strategy,
        timeout=30,
        rate_limit="100/m",
        concurrency_limit=4,
        critical=True,
        description="Send one email",
    )
    assert spec == HandlerSpec(
        name="email",
        func=send,
        queue="emails",
        priority=50,
        max_attempts=5,
        retry=strategy,
        timeout=30.0,
        rate_limit="100/m",
        concurrency_limit=4,
        critical=True,
        description="Send one email",
    )
    assert isinstance(spec.timeout, float)
    assert spec.signature == inspect.signature(send)
    assert spec.is_async is False
    assert spec.takes_context is False


def test_build_spec_defaults() -> None:
    spec = build_spec("plain", send)
    assert (spec.queue, spec.priority, spec.max_attempts, spec.retry, spec.timeout) == (
        "default",
        0,
        None,
        None,
        None,
    )
    assert (spec.rate_limit, spec.concurrency_limit, spec.critical, spec.description) == (
        None,
        None,
        False,
        "",
    )


def test_build_spec_detects_async_handlers() -> None:
    assert build_spec("async", send_async).is_async is True


@pytest.mark.parametrize("priority", [-100, 0, 100, "critical", "low"])
def test_build_spec_accepts_priorities_in_range(priority: int | str) -> None:
    expected = {"critical": 100, "low": -50}.get(priority, priority)  # type: ignore[call-overload]
    assert build_spec("p", send, priority=priority).priority == expected


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("", "invalid task type name ''"),
        ("has space", "invalid task type name 'has space'"),
        ("x" * 201, "invalid task type name"),
        ("semi;colon", "invalid task type name 'semi;colon'"),
        (None, "invalid task type name None"),
    ],
)
def test_bad_name_is_improperly_configured(name: object, fragment: str) -> None:
    with pytest.raises(ImproperlyConfigured, match="invalid task type name") as info:
        build_spec(name, send)  # type: ignore[arg-type]
    assert fragment in str(info.value)


def test_name_of_200_characters_is_accepted() -> None:
    assert build_spec("a" * 200, send).name == "a" * 200


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"queue": "has space"}, "invalid queue name 'has space'"),
        ({"queue": ""}, "invalid queue name ''"),
        ({"queue": "q" * 101}, "invalid queue name"),
        ({"queue": 7}, "invalid queue name 7"),
        ({"priority": "urgent"}, "unknown priority 'urgent'"),
        ({"priority": 101}, "priority 101 is out of range -100..100"),
        ({"priority": -101}, "priority -101 is out of range -100..100"),
        ({"priority": True}, "priority must be a name or an integer, got True"),
        ({"priority": 1.5}, "priority must be a name or an integer, got 1.5"),
        ({"max_attempts": 0}, "max_attempts must be a positive integer, got 0"),
        ({"max_attempts": True}, "max_attempts must be a positive integer, got True"),
        ({"max_attempts": 2.0}, "max_attempts must be a positive integer, got 2.0"),
        ({"timeout": 0}, "timeout must be a positive number of seconds, got 0"),
        ({"timeout": "30"}, "timeout must be a positive number of seconds, got '30'"),
        ({"retry": "exponential"}, "retry must be a strategy"),
        ({"retry": {"kind": "fixed"}}, "retry must be a strategy"),
        ({"rate_limit": "100/minute"}, "rate_limit must look like '100/m'"),
        ({"rate_limit": "fast"}, "rate_limit must look like '100/m'"),
        ({"rate_limit": 100}, "rate_limit must look like '100/m'"),
        ({"concurrency_limit": 0}, "concurrency_limit must be a positive integer, got 0"),
        ({"concurrency_limit": False}, "concurrency_limit must be a positive integer, got False"),
    ],
)
def test_bad_option_names_the_handler_and_the_problem(
    options: dict[str, object], fragment: str
) -> None:
    with pytest.raises(ImproperlyConfigured) as info:
        build_spec("email", send, **options)
    message = str(info.value)
    assert message.startswith("handler 'email': ")
    assert fragment in message


def test_unknown_option_is_named() -> None:
    with pytest.raises(ImproperlyConfigured) as info:
        build_spec("email", send, queues=["a"], retries=3)
    assert str(info.value) == "unknown option(s) for handler 'email': queues, retries"


@pytest.mark.parametrize("internal", ["is_async", "signature"])
def test_internal_fields_are_not_options(internal: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=f"unknown option\\(s\\).*{internal}"):
        build_spec("email", send, **{internal: None})


def test_takes_context_without_a_parameter_is_rejected() -> None:
    with pytest.raises(ImproperlyConfigured) as info:
        build_spec("ctx", no_parameters, takes_context=True)
    assert str(info.value) == (
        "handler 'ctx' has takes_context=True but accepts no context argument"
    )


def test_takes_context_binds_the_context_first() -> None:
    spec = build_spec("ctx", needs_context, takes_context=True)
    bound = spec.bind_payload({"label": "x"}, context="CTX")
    assert bound.args == ("CTX", "x")
    with pytest.raises(TypeError, match="missing a required argument: 'label'"):
        spec.bind_payload({}, context="CTX")


def test_bind_payload_reports_missing_and_unexpected_arguments() -> None:
    spec = build_spec("email", send)
    assert spec.bind_payload({"to": "a"}).arguments == {"to": "a"}
    with pytest.raises(TypeError, match="missing a required argument: 'to'"):
        spec.bind_payload({"subject": "s"})
    with pytest.raises(TypeError, match="unexpected keyword argument 'cc'"):
        spec.bind_payload({"to": "a", "cc": "b"})


def test_not_callable_is_rejected() -> None:
    with pytest.raises(ImproperlyConfigured, match="handler for 'x' is not callable: 42"):
        build_spec("x", 42)  # type: ignore[arg-type]


def test_validators_return_clean_values() -> None:
    assert validate_queue_name("emails.high-1_a") == "emails.high-1_a"
    assert validate_max_attempts(1) == 1
    assert validate_timeout(2) == 2.0
    with pytest.raises(InvalidTaskOption):
        validate_max_attempts(-1)
    with pytest.raises(InvalidTaskOption):
        validate_timeout(-0.5)


def test_duplicate_name_names_both_functions() -> None:
    fresh = Registry()
    fresh.add(build_spec("email", send))
    with pytest.raises(ImproperlyConfigured) as info:
        fresh.add(build_spec("email", other_send))
    assert str(info.value) == (
        "task type 'email' is registered twice: by tests.test_registry.send "
        "and by tests.test_registry.other_send"
    )
    assert fresh.get("email").func is send


def test_registering_the_same_function_again_is_fine() -> None:
    fresh = Registry()
    fresh.add(build_spec("email", send))
    replacement = fresh.add(build_spec("email", send, queue="emails"))
    assert fresh.get("email") is replacement
    assert fresh.names() == ["email"]


def test_a_reloaded_module_re_registers_without_error() -> None:
    # After importlib.reload the function is a new object with the same module and qualname.
    def send() -> None:
        return None

    def reloaded() -> None:
        return None

    reloaded.__qualname__ = send.__qualname__
    fresh = Registry()
    fresh.add(build_spec("email", send))
    assert fresh.add(build_spec("email", reloaded)).func is reloaded


def test_lookup_of_unknown_type_raises_unknown_task_type() -> None:
    with pytest.raises(UnknownTaskType) as info:
        Registry().get("nope")
    assert str(info.value) == "no handler is registered for task type 'nope'"
    assert isinstance(info.value, LookupError)


def test_names_specs_and_membership_are_sorted_by_name() -> None:
    fresh = Registry()
    b = fresh.add(build_spec("b", send))
    a = fresh.add(build_spec("a", other_send))
    assert fresh.names() == ["a", "b"]
    assert fresh.specs() == [a, b]
    assert "a" in fresh
    assert "c" not in fresh


def test_override_adds_specs_and_restores_the_registry() -> None:
    before = registry.names()
    spec = build_spec("test-registry-override", send)
    with registry.override(spec) as active:
        assert active is registry
        assert registry.get("test-registry-override") is spec
        assert "noop" in registry
        # Handlers registered inside the block vanish with it too.
        registry.add(build_spec("test-registry-inner", other_send))
        assert "test-registry-inner" in registry
    assert registry.names() == before
    assert "test-registry-override" not in registry
    assert "test-registry-inner" not in registry


def test_override_can_replace_an_existing_spec() -> None:
    original = registry.get("noop")
    stand_in = build_spec("noop", other_send)
    with registry.override(stand_in):
        assert registry.get("noop") is stand_in
    assert registry.get("noop") is original


def test_override_without_existing_hides_other_handlers() -> None:
    spec = build_spec("only-one", send)
    with registry.override(spec, keep_existing=False):
        assert registry.names() == ["only-one"]
        with pytest.raises(UnknownTaskType):
            registry.get("noop")
    assert "noop" in registry
    assert "only-one" not in registry


def test_override_restores_after_an_exception() -> None:
    before = registry.names()
    with pytest.raises(RuntimeError), registry.override(build_spec("boom", send)):
        raise RuntimeError("inside")
    assert registry.names() == before


def test_test_handlers_are_registered_by_autodiscovery() -> None:
    spec = registry.get("add")
    assert spec.priority == 50
    assert spec.func.__module__ == "tests.testapp.tasks"
