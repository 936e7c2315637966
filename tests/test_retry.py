"""Retry strategies: exact delays for explicit attempts, jitter bounds, storage round trip."""

from __future__ import annotations

import json
import random

import pytest

import taskqueue
from taskqueue.core.retry import (
    DEFAULT_STRATEGY,
    Exponential,
    Fixed,
    Linear,
    NoRetry,
    RetryStrategy,
    next_delay,
    strategy_from_dict,
)
from taskqueue.exceptions import InvalidTaskOption


@pytest.fixture
def rng() -> random.Random:
    return random.Random(1234)


@pytest.mark.parametrize(
    ("attempt", "expected"),
    [(0, 2.0), (1, 2.0), (2, 6.0), (3, 18.0), (4, 54.0), (5, 100.0), (50, 100.0)],
)
def test_exponential_without_jitter_is_exact_and_capped(
    attempt: int, expected: float, rng: random.Random
) -> None:
    strategy = Exponential(base=2.0, factor=3.0, max_delay=100.0, jitter=False)
    assert next_delay(attempt, strategy, rng) == expected


def test_exponential_defaults_double_from_one_second_up_to_five_minutes(
    rng: random.Random,
) -> None:
    strategy = Exponential(jitter=False)
    delays = [strategy.delay(attempt, rng) for attempt in range(1, 11)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 300.0]


def test_exponential_survives_overflow_by_using_the_cap(rng: random.Random) -> None:
    strategy = Exponential(base=1.0, factor=10.0, max_delay=42.0, jitter=False)
    assert strategy.delay(100_000, rng) == 42.0


def test_exponential_jitter_stays_within_the_upper_half(rng: random.Random) -> None:
    strategy = Exponential(base=1.0, factor=2.0, max_delay=300.0, jitter=True)
    for attempt in range(1, 13):
        planned = min(2.0 ** (attempt - 1), 300.0)
        draws = [strategy.delay(attempt, rng) for _ in range(200)]
        assert all(planned / 2 <= d <= planned for d in draws), (attempt, min(draws), max(draws))
        # Jitter really spreads the retries: 200 draws are not all the same value.
        assert len(set(draws)) == 200


def test_jitter_is_deterministic_for_a_seed() -> None:
    strategy = Exponential(base=1.0, factor=2.0, max_delay=300.0, jitter=True)
    first = [strategy.delay(attempt, random.Random(7)) for attempt in range(1, 10)]
    second = [strategy.delay(attempt, random.Random(7)) for attempt in range(1, 10)]
    other_seed = [strategy.delay(attempt, random.Random(8)) for attempt in range(1, 10)]
    assert first == second
    assert first != other_seed
    expected = random.Random(7).uniform(4.0, 8.0)  # attempt 4: planned 8 s
    assert strategy.delay(4, random.Random(7)) == expected


@pytest.mark.parametrize(
    ("attempt", "expected"), [(1, 10.0), (2, 15.0), (3, 20.0), (4, 25.0), (5, 30.0), (9, 30.0)]
)
def test_linear_steps_up_to_the_cap(attempt: int, expected: float, rng: random.Random) -> None:
    assert next_delay(attempt, Linear(base=10, step=5, max_delay=30), rng) == expected


def test_linear_defaults(rng: random.Random) -> None:
    strategy = Linear()
    assert [strategy.delay(a, rng) for a in (1, 2, 3)] == [10.0, 20.0, 30.0]
    assert strategy.delay(1000, rng) == 3600.0


@pytest.mark.parametrize("attempt", [1, 2, 7, 100])
def test_fixed_waits_the_same_every_time(attempt: int, rng: random.Random) -> None:
    assert next_delay(attempt, Fixed(seconds=7.5), rng) == 7.5
    assert next_delay(attempt, Fixed(0), rng) == 0.0


def test_no_retry_has_no_delay(rng: random.Random) -> None:
    assert next_delay(1, NoRetry(), rng) == 0.0


def test_strategies_do_not_consume_randomness_unless_jittering() -> None:
    rng = random.Random(3)
    state = rng.getstate()
    for strategy in (Exponential(jitter=False), Linear(), Fixed(), NoRetry()):
        strategy.delay(3, rng)
    assert rng.getstate() == state


def test_next_delay_never_returns_a_negative_delay(rng: random.Random) -> None:
    class Backwards(RetryStrategy):
        def delay(self, attempt: int, rng: random.Random) -> float:
            return -5.0

    assert next_delay(1, Backwards(), rng) == 0.0


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        (
            Exponential(),
            {"kind": "exponential", "base": 1.0, "factor": 2.0, "max_delay": 300.0, "jitter": True},
        ),
        (
            Exponential(base=0.5, factor=3, max_delay=60, jitter=False),
            {"kind": "exponential", "base": 0.5, "factor": 3, "max_delay": 60, "jitter": False},
        ),
        (
            Linear(base=1, step=2, max_delay=9),
            {"kind": "linear", "base": 1, "step": 2, "max_delay": 9},
        ),
        (Fixed(seconds=4), {"kind": "fixed", "seconds": 4}),
        (NoRetry(), {"kind": "none"}),
    ],
)
def test_to_dict_and_back(strategy: RetryStrategy, expected: dict[str, object]) -> None:
    assert strategy.to_dict() == expected
    # The dict is stored in a JSON column: it must survive the trip through JSON too.
    stored = json.loads(json.dumps(strategy.to_dict()))
    rebuilt = strategy_from_dict(stored)
    assert rebuilt == strategy
    assert type(rebuilt) is type(strategy)


def test_public_names_are_the_strategy_classes() -> None:
    assert taskqueue.Exponential is Exponential
    assert taskqueue.Linear is Linear
    assert taskqueue.Fixed is Fixed
    assert taskqueue.NoRetry is NoRetry
    assert DEFAULT_STRATEGY == Exponential(base=1.0, factor=2.0, max_delay=300.0, jitter=True)


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda: Exponential(base=-1), "retry base must be a non-negative number, got -1"),
        (lambda: Exponential(factor=-2.0), "retry factor must be a non-negative number"),
        (lambda: Exponential(max_delay="300"), "retry max_delay must be a non-negative number"),
        (lambda: Exponential(base=float("nan")), "retry base must be a non-negative number"),
        (lambda: Exponential(max_delay=float("inf")), "retry max_delay must be"),
        (lambda: Linear(step=-1), "retry step must be a non-negative number, got -1"),
        (lambda: Linear(base=None), "retry base must be a non-negative number, got None"),
        (lambda: Linear(max_delay=True), "retry max_delay must be a non-negative number"),
        (lambda: Fixed(seconds=-0.5), "retry seconds must be a non-negative number, got -0.5"),
        (lambda: Fixed(seconds=float("nan")), "retry seconds must be a non-negative number"),
    ],
)
def test_bad_values_raise_invalid_task_option(make, fragment: str) -> None:
    with pytest.raises(InvalidTaskOption) as info:
        make()
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    "stored",
    [
        None,
        "exponential",
        [],
        {},
        {"kind": "bogus"},
        {"kind": None},
        {"base": 1.0},
        {"kind": "fixed", "seconds": -1},
        {"kind": "fixed", "seconds": "ten"},
        {"kind": "fixed", "minutes": 3},
        {"kind": "linear", "base": 1, "step": 1, "max_delay": 1, "extra": True},
    ],
)
def test_unreadable_stored_strategy_falls_back_to_the_default(stored: object) -> None:
    assert strategy_from_dict(stored) is DEFAULT_STRATEGY  # type: ignore[arg-type]


def test_strategy_from_dict_does_not_modify_its_argument() -> None:
    stored = {"kind": "fixed", "seconds": 3}
    assert strategy_from_dict(stored) == Fixed(3)
    assert stored == {"kind": "fixed", "seconds": 3}


def test_partial_stored_strategy_fills_in_the_defaults() -> None:
    assert strategy_from_dict({"kind": "linear", "step": 1}) == Linear(base=10.0, step=1)
