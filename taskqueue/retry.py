"""Retry strategies: pure functions of the attempt number and a random source.

A strategy is stored on each task as a small JSON object (``to_dict``), so a task keeps the
strategy it was enqueued with and a worker never imports anything a row names.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from taskqueue.exceptions import InvalidTaskOption


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

    def delay(self, attempt: int, rng: random.Random) -> float:
        return float(min(self.base + self.step * max(attempt - 1, 0), self.max_delay))


@dataclass(frozen=True)
class Fixed(RetryStrategy):
    """Wait the same ``delay`` seconds after every failed attempt."""

    kind: ClassVar[str] = "fixed"
    seconds: float = 10.0

    def __post_init__(self) -> None:
        _check_non_negative(seconds=self.seconds)

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
    return max(strategy.delay(attempt, rng), 0.0)
