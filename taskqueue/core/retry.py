"""Retry strategies: pure functions of the attempt number and a random source.

A strategy is stored on each task as a small JSON object (``to_dict``), so a task keeps the
strategy it was enqueued with and a worker never imports anything a row names.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from taskqueue.core.limits import MAX_DELAY_SECONDS, MAX_DELAY_TEXT, check_delay_seconds
from taskqueue.exceptions import InvalidTaskOption

logger = logging.getLogger("taskqueue.core.retry")


class RetryStrategy:
    """Base class: ``delay(attempt, rng)`` gives seconds to wait after failed ``attempt``."""

    kind: ClassVar[str] = ""

    def delay(self, attempt: int, rng: random.Random) -> float:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **asdict(self)}  # type: ignore[call-overload]


def _check_non_negative(**values: float | None) -> None:
    for name, value in values.items():
        # NaN and infinity would reach timedelta() in the worker's retry path and crash it.
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value < 0
        ):
            raise InvalidTaskOption(f"retry {name} must be a non-negative number, got {value!r}")


def _check_delay_bound(**values: float) -> None:
    # A delay past MAX_DELAY would store a run_at no reader can parse back.
    for name, value in values.items():
        check_delay_seconds(value, f"retry {name}")


@dataclass(frozen=True)
class Exponential(RetryStrategy):
    """Wait ``base * factor ** (attempt - 1)`` seconds, capped at ``max_delay``.

    With ``jitter`` the wait is drawn uniformly from the upper half of that value, so many
    tasks failing together do not retry in lockstep, yet never retry sooner than half the
    planned delay.
    """

    kind: ClassVar[str] = "exponential"
    base: float = 1.0
    factor: float = 2.0
    max_delay: float = 300.0
    jitter: bool = True

    def __post_init__(self) -> None:
        _check_non_negative(base=self.base, factor=self.factor, max_delay=self.max_delay)
        _check_delay_bound(max_delay=self.max_delay)

    def delay(self, attempt: int, rng: random.Random) -> float:
        exponent = max(attempt - 1, 0)
        try:
            planned = self.base * self.factor**exponent
        except OverflowError:
            planned = self.max_delay
        planned = min(planned, self.max_delay)
        if self.jitter:
            return rng.uniform(planned / 2, planned)
        return float(planned)


@dataclass(frozen=True)
class Linear(RetryStrategy):
    """Wait ``base + step * (attempt - 1)`` seconds, capped at ``max_delay``."""

    kind: ClassVar[str] = "linear"
    base: float = 10.0
    step: float = 10.0
    max_delay: float = 3600.0

    def __post_init__(self) -> None:
        _check_non_negative(base=self.base, step=self.step, max_delay=self.max_delay)
        _check_delay_bound(max_delay=self.max_delay)

    def delay(self, attempt: int, rng: random.Random) -> float:
        return float(min(self.base + self.step * max(attempt - 1, 0), self.max_delay))


@dataclass(frozen=True)
class Fixed(RetryStrategy):
    """Wait the same ``delay`` seconds after every failed attempt."""

    kind: ClassVar[str] = "fixed"
    seconds: float = 10.0

    def __post_init__(self) -> None:
        _check_non_negative(seconds=self.seconds)
        _check_delay_bound(seconds=self.seconds)

    def delay(self, attempt: int, rng: random.Random) -> float:
        return float(self.seconds)


@dataclass(frozen=True)
class NoRetry(RetryStrategy):
    """Never retry: the first failure dead-letters the task."""

    kind: ClassVar[str] = "none"

    def delay(self, attempt: int, rng: random.Random) -> float:
        return 0.0


STRATEGIES: dict[str, type[RetryStrategy]] = {
    cls.kind: cls for cls in (Exponential, Linear, Fixed, NoRetry)
}

DEFAULT_STRATEGY = Exponential()


def strategy_from_dict(data: dict[str, Any] | None) -> RetryStrategy:
    """Rebuild a strategy stored on a task; an unreadable one falls back to the default."""
    if not isinstance(data, dict):
        return DEFAULT_STRATEGY
    fields = dict(data)
    cls = STRATEGIES.get(str(fields.pop("kind", "")))
    if cls is None:
        return DEFAULT_STRATEGY
    try:
        return cls(**fields)
    except (TypeError, InvalidTaskOption):
        return DEFAULT_STRATEGY


def next_delay(attempt: int, strategy: RetryStrategy, rng: random.Random) -> float:
    """Return the seconds to wait before retrying after failed ``attempt`` (1-based)."""
    return bounded_delay(strategy.delay(attempt, rng))


def bounded_delay(seconds: float) -> float:
    """Return ``seconds`` within 0..MAX_DELAY: the last guard before a ``run_at`` is stored.

    Strategies and ``Retry`` refuse larger delays up front; a value that gets here anyway
    (a custom strategy, say) is clamped with a warning rather than stored unreadable.
    """
    # seconds != seconds: NaN (math.isnan cannot take an int too large for a float).
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds != seconds:
        logger.warning(
            "retry delay %.60r is not a number of seconds: retrying without delay", seconds
        )
        return 0.0
    if seconds > MAX_DELAY_SECONDS:
        logger.warning(
            "retry delay %s is over the maximum of %s: using the maximum",
            f"{seconds:.6g} s"
            if isinstance(seconds, float)
            else f"{seconds.bit_length()} bits long",
            MAX_DELAY_TEXT,
        )
        return MAX_DELAY_SECONDS
    return max(float(seconds), 0.0)
