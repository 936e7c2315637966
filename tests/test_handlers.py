"""``@taskqueue.handler``, ``taskqueue.register`` and the ``TaskHandler`` they return."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured

import taskqueue
from taskqueue.core.registry import registry
from taskqueue.handlers import TaskHandler
from taskqueue.models import Task, TaskStatus


def greet(name: str, punctuation: str = "!") -> str:
    """Say hello."""
    return f"hello {name}{punctuation}"


def other_greet(name: str) -> str:
    return name


@pytest.fixture
def scratch_registry():
    """Let a test register handlers for real; they vanish when it ends."""
    with registry.override() as active:
        yield active


def test_decorator_registers_with_options(scratch_registry) -> None:
    @taskqueue.handler("greet", queue="greetings", priority="low", max_attempts=2, timeout=5)
    def decorated(name: str) -> str:
        return name

    assert isinstance(decorated, TaskHandler)
    spec = registry.get("greet")
    assert decorated.spec is spec
    assert decorated.name == "greet"
    assert (spec.queue, spec.priority, spec.max_attempts, spec.timeout) == (
        "greetings",
        -50,
        2,
        5.0,
    )


def test_handler_calls_through_and_keeps_the_function_identity(scratch_registry) -> None:
    wrapped = taskqueue.handler("greet")(greet)
    assert wrapped("ada", punctuation="?") == "hello ada?"
    assert wrapped.__name__ == "greet"
    assert wrapped.__doc__ == "Say hello."
    assert wrapped.__wrapped__ is greet
    assert repr(wrapped) == "<TaskHandler 'greet'>"


def test_name_defaults_to_module_and_qualname(scratch_registry) -> None:
    wrapped = taskqueue.handler()(greet)
    assert wrapped.name == "tests.test_handlers.greet"
    assert registry.get("tests.test_handlers.greet").func is greet


def test_decorator_without_parentheses_is_a_clear_type_error(scratch_registry) -> None:
    before = registry.names()
    with pytest.raises(TypeError) as info:
        taskqueue.handler(greet)  # type: ignore[arg-type]
    assert str(info.value) == (
        "use @taskqueue.handler('type-name', ...) with parentheses and a task type name"
    )
    assert registry.names() == before


def test_decorator_rejects_bad_options_at_decoration_time(scratch_registry) -> None:
    with pytest.raises(ImproperlyConfigured, match="handler 'greet': unknown priority 'urgent'"):
        taskqueue.handler("greet", priority="urgent")(greet)
    assert "greet" not in registry


def test_decorator_rejects_takes_context_without_a_parameter(scratch_registry) -> None:
    def bare() -> None:
        return None

    with pytest.raises(ImproperlyConfigured, match="takes_context=True but accepts no context"):
        taskqueue.handler("bare", takes_context=True)(bare)


def test_decorator_with_a_duplicate_name_names_both_functions(scratch_registry) -> None:
    taskqueue.handler("greet")(greet)
    with pytest.raises(ImproperlyConfigured) as info:
        taskqueue.handler("greet")(other_greet)
    assert str(info.value) == (
        "task type 'greet' is registered twice: by tests.test_handlers.greet "
        "and by tests.test_handlers.other_greet"
    )
    assert registry.get("greet").func is greet


def test_decorating_the_same_function_twice_is_fine(scratch_registry) -> None:
    first = taskqueue.handler("greet")(greet)
    second = taskqueue.handler("greet", queue="again")(greet)
    assert first.spec.func is second.spec.func is greet
    assert registry.get("greet").queue == "again"


def test_register_is_the_explicit_form(scratch_registry) -> None:
    handler = taskqueue.register("greet", greet, queue="greetings", critical=True)
    assert isinstance(handler, TaskHandler)
    spec = registry.get("greet")
    assert (spec.func, spec.queue, spec.critical) == (greet, "greetings", True)
    assert handler("bob") == "hello bob!"


def test_register_unwraps_a_task_handler(scratch_registry) -> None:
    decorated = taskqueue.handler("greet")(greet)
    alias = taskqueue.register("greet-alias", decorated)
    assert alias.spec.func is greet
    assert registry.get("greet-alias").func is greet


def test_scratch_registry_leaves_nothing_behind() -> None:
    assert "greet" not in registry
    assert "tests.test_handlers.greet" not in registry


@pytest.mark.django_db
def test_enqueue_with_keyword_payload(scratch_registry) -> None:
    handler = taskqueue.handler("greet", queue="greetings", priority="low")(greet)
    task = handler.enqueue(name="ada", punctuation="?")
    stored = Task.objects.get()
    assert stored.id == task.id
    assert (stored.task_type, stored.queue, stored.priority, stored.status) == (
        "greet",
        "greetings",
        -50,
        TaskStatus.PENDING,
    )
    assert stored.payload == {"name": "ada", "punctuation": "?"}


@pytest.mark.django_db
def test_enqueue_with_options_in_a_leading_dict(scratch_registry) -> None:
    handler = taskqueue.handler("greet")(greet)
    task = handler.enqueue({"priority": "high", "queue": "vip"}, name="ada")
    stored = Task.objects.get(id=task.id)
    assert (stored.priority, stored.queue, stored.payload) == (50, "vip", {"name": "ada"})


@pytest.mark.django_db
def test_enqueue_checks_the_payload_against_the_signature(scratch_registry) -> None:
    handler = taskqueue.handler("greet")(greet)
    with pytest.raises(taskqueue.InvalidPayload, match="unexpected keyword argument 'age'"):
        handler.enqueue(name="ada", age=3)
    assert Task.objects.count() == 0


@pytest.mark.django_db
def test_enqueue_many_stores_one_task_per_payload(scratch_registry) -> None:
    handler = taskqueue.handler("greet")(greet)
    tasks = handler.enqueue_many([{"name": "a"}, {"name": "b"}, {"name": "c"}], priority=7)
    assert [t.payload for t in tasks] == [{"name": "a"}, {"name": "b"}, {"name": "c"}]
    stored = Task.objects.order_by("payload__name")
    assert [(t.task_type, t.payload["name"], t.priority) for t in stored] == [
        ("greet", "a", 7),
        ("greet", "b", 7),
        ("greet", "c", 7),
    ]
    assert {t.id for t in tasks} == {t.id for t in stored}


@pytest.mark.django_db
def test_enqueue_many_of_nothing_stores_nothing(scratch_registry) -> None:
    handler = taskqueue.handler("greet")(greet)
    assert handler.enqueue_many([]) == []
    assert Task.objects.count() == 0
