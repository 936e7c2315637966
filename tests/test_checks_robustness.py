"""The checks never crash and every id they report is documented: fuzzing every setting with
junk, the id table in docs/checks.md, and real ``manage.py check`` / ``run_worker`` processes.
"""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.core.checks import ERROR, CheckMessage, Tags, run_checks
from django.test import override_settings

from taskqueue.checks import messages as check_messages
from taskqueue.checks import never_raising
from taskqueue.checks.messages import shown
from taskqueue.checks.sections import SECTION_RULES
from taskqueue.checks.settings import SETTING_RULES
from taskqueue.conf import DEFAULTS, MERGED_DICTS

CLEAN = {"HEARTBEAT_INTERVAL": 10, "STALE_AFTER": 60}
NAN = float("nan")
INF = float("inf")
HUGE = 10**5000  # Python refuses to print it: a message about it must still be written
REPO_ROOT = Path(__file__).resolve().parent.parent


# --- the id table ----------------------------------------------------------------------


def test_every_setting_and_merged_key_has_a_rule() -> None:
    # A setting added to conf.DEFAULTS without a check here would go unchecked.
    assert set(DEFAULTS) <= set(SETTING_RULES)
    for name in MERGED_DICTS:
        assert set(SECTION_RULES[name]) == set(DEFAULTS[name]), name


def test_no_rule_without_a_setting() -> None:
    # check_settings runs every rule; one for a name conf.DEFAULTS lacks would check a key
    # that is also reported unknown (E001).
    assert set(SETTING_RULES) <= set(DEFAULTS)


def documented_rows() -> list[tuple[str, str]]:
    """(id, level) of each row of the table in docs/checks.md."""
    table = (REPO_ROOT / "docs" / "checks.md").read_text()
    return re.findall(r"^\| `(taskqueue\.[EW]\d{3})` \| (\w+) \|", table, re.MULTILINE)


def documented_ids() -> dict[str, str]:
    """Id to level, from the table in docs/checks.md."""
    return dict(documented_rows())


def test_every_id_is_documented_once_with_its_level() -> None:
    in_code = {
        value
        for name, value in vars(check_messages).items()
        if name.isupper() and isinstance(value, str) and value.startswith("taskqueue.")
    }
    rows = documented_rows()
    assert len(rows) == len(set(rows))
    documented = documented_ids()
    assert set(documented) == in_code
    assert all(
        level == ("Error" if id_[10] == "E" else "Warning") for id_, level in documented.items()
    )


# --- fuzz: whatever the settings hold, the checks report and never raise -------------------


class Unprintable:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


def deeply_nested(depth: int) -> list[Any]:
    outer: list[Any] = []
    inner = outer
    for _ in range(depth):
        inner.append([])
        inner = inner[0]
    return outer


# Invalid for every setting and every key of a merged dict.
ALWAYS_INVALID: list[Any] = [NAN, INF, -INF, HUGE, -7, 1j, b"x", object(), Unprintable()]
ALWAYS_INVALID += ["\x00", Decimal("NaN"), [NAN], {"\ud800": HUGE}, deeply_nested(3000)]
EVERY_KEY = [(name, None) for name in DEFAULTS]
EVERY_KEY += [(name, key) for name in sorted(MERGED_DICTS) for key in DEFAULTS[name]]


def taskqueue_messages(taskqueue: Any) -> list[CheckMessage]:
    """Run every registered compatibility check (as manage.py check does) on ``taskqueue``."""
    with override_settings(TASKQUEUE=taskqueue):
        messages = run_checks(tags=[Tags.compatibility])
    return [m for m in messages if m.id and m.id.startswith("taskqueue.")]


def assert_reported_safely(messages: list[CheckMessage]) -> None:
    documented = documented_ids()
    for message in messages:
        assert message.id in documented, message
        assert message.id != "taskqueue.E011", message  # the safety net is not the check
        str(message).encode("utf-8")  # manage.py check can print it


@pytest.mark.parametrize(("name", "key"), EVERY_KEY)
def test_junk_in_any_key_is_an_error_naming_it(name: str, key: str | None) -> None:
    where = f"[{name!r}]" if key is None else f"[{name!r}][{key!r}]"
    for value in ALWAYS_INVALID:
        taskqueue = {name: value} if key is None else {name: {key: value}}
        messages = taskqueue_messages({**CLEAN, **taskqueue})
        assert_reported_safely(messages)
        errors = [m for m in messages if m.level >= ERROR and where in m.msg]
        assert errors, (name, key, shown(value), [m.msg for m in messages])


def random_junk(rng: random.Random, depth: int = 0) -> Any:
    """A value of a random type, often invalid, sometimes nested, sometimes valid."""
    scalars = [NAN, INF, HUGE, -HUGE, 2**63, 0, -0.0, 1, 7.5, True, False, None, "", "x" * 500]
    scalars += ["\x00", "\ud800", "default", "*/5 * * * *", "https://x.test/a", b"b", 1j]
    scalars += [Decimal("1"), object(), Unprintable(), Tags.compatibility, random_junk]
    if depth >= 3 or rng.random() < 0.5:
        return rng.choice(scalars)
    items = [random_junk(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    shape = rng.choice(["list", "tuple", "dict", "set", "known-keys"])
    if shape == "list":
        return items
    if shape == "tuple":
        return tuple(items)
    if shape == "set":
        return {item for item in items if isinstance(item, str | int | float | bytes)}
    if shape == "dict":
        return {rng.choice([*scalars[4:12], "emails", "n"]): item for item in items}
    # A dict of real sub-keys (merged dicts, HEALTH QUEUES, schedules) with junk values.
    known = sorted({k for n in MERGED_DICTS for k in DEFAULTS[n]} | {"task", "cron", "grace"})
    return {rng.choice(known): item for item in items}


def test_fuzz_random_settings_never_crash_the_checks() -> None:
    rng = random.Random(20240611)
    names = [*DEFAULTS, "BOGUS", 5, None]
    for _ in range(300):
        taskqueue = {rng.choice(names): random_junk(rng) for _ in range(rng.randint(1, 4))}
        assert_reported_safely(taskqueue_messages(taskqueue))
    for value in [random_junk(rng) for _ in range(30)]:
        assert_reported_safely(taskqueue_messages(value))  # TASKQUEUE itself junk


def run_django(tmp_path: Path, command: str, taskqueue: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m django <command>`` with the test settings plus ``taskqueue`` items."""
    (tmp_path / "bad_taskqueue_settings.py").write_text(
        f"from tests.settings import *  # noqa: F403\nTASKQUEUE = {{**TASKQUEUE, {taskqueue}}}\n"
    )
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "bad_taskqueue_settings",
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO_ROOT)]),
    }
    return subprocess.run(
        [sys.executable, "-m", "django", *command.split()],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_manage_py_check_reports_the_reported_settings_without_a_traceback(
    tmp_path: Path,
) -> None:
    result = run_django(
        tmp_path,
        "check",
        '"STALE_AFTER": float("nan"), "DATABASE": ["default"], "POLL_INTERVAL": float("inf"), '
        '"HEALTH": {"QUEUES": {"emails": {"MAX_PENDING": 10**5000}}}',
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    for expected in (
        "(taskqueue.E002) TASKQUEUE['DATABASE'] must be the name of a database",
        "(taskqueue.E005) TASKQUEUE['STALE_AFTER'] must be a positive number of seconds, got nan",
        "(taskqueue.E005) TASKQUEUE['POLL_INTERVAL']",
        "(taskqueue.E006) TASKQUEUE['HEALTH']['QUEUES']['emails']['MAX_PENDING']",
    ):
        assert expected in result.stderr, result.stderr


def test_a_worker_refuses_to_start_on_a_nan_stale_after(tmp_path: Path) -> None:
    # Reported in issue 9: the rescue duty failed on every round and never rescued.
    result = run_django(tmp_path, "run_worker --burst", '"STALE_AFTER": float("nan")')
    assert result.returncode == 1, result.stderr
    assert "SystemCheckError" in result.stderr
    assert "(taskqueue.E005) TASKQUEUE['STALE_AFTER']" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_check_that_raises_anyway_is_reported_as_e011() -> None:
    # The safety nets: the fuzzing above shows no rule needs them.
    def broken_rule(where: str, value: Any) -> list[CheckMessage]:
        raise ZeroDivisionError

    [message] = check_messages.guarded(broken_rule, "TASKQUEUE['POOL']", "x")
    assert message.id == "taskqueue.E011"
    assert message.msg == (
        "TASKQUEUE['POOL'] could not be checked: the check raised ZeroDivisionError."
    )

    def broken_check(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
        raise KeyError("x")

    [message] = never_raising(broken_check)()
    assert message.id == "taskqueue.E011"
    assert "broken_check could not finish: it raised KeyError" in message.msg
