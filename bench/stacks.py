"""Read py-spy's collapsed stacks (``--format raw --threads``) and summarise the hot spots."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

STARTUP = "MainThread: start-up and exit"
# "thread (1234): taskqueue-task_0" -> "taskqueue-task"
_THREAD = re.compile(r"^thread \(\d+\)(?::\s*(?P<name>.*?))?(?:_\d+)?$")
# "Worker._record (taskqueue/worker/loop.py:231)" -> function, file, line
_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
# Where a sample's own time lands, by the file of its innermost frame.
LAYERS = [
    ("taskqueue", "taskqueue/"),
    ("django", "django/"),
    ("psycopg", "psycopg"),
    ("logging", "logging/"),
    ("json", "json/"),
    ("uuid", "uuid.py"),
    ("threading and futures", "threading.py"),
    ("threading and futures", "concurrent/futures/"),
    ("threading and futures", "queue.py"),
    ("dataclasses and typing", "dataclasses.py"),
    ("dataclasses and typing", "typing.py"),
    ("datetime", "datetime.py"),
    ("inspect", "inspect.py"),
    ("importing (start-up)", "<frozen importlib"),
    ("bench", "bench/"),
]


def _frame_key(frame: str) -> tuple[str, str]:
    """(function, file) of a frame, without the line: lines of one function add up."""
    match = _FRAME.match(frame)
    if match is None:
        return frame, ""
    return match["function"], match["file"]


def _layer(file: str) -> str:
    for name, marker in LAYERS:
        if marker in file:
            return name
    return "other (stdlib, C calls)" if file else "other"


@dataclass
class StackProfile:
    """Sample counts by thread, by own-time function, by inclusive function and by layer."""

    all_samples: int = 0
    samples: int = 0  # steady state: start-up and exit left out
    by_thread: Counter[str] = field(default_factory=Counter)
    own: Counter[tuple[str, str]] = field(default_factory=Counter)
    inclusive: Counter[tuple[str, str]] = field(default_factory=Counter)
    by_layer: Counter[str] = field(default_factory=Counter)

    @classmethod
    def from_raw(cls, path: Path) -> StackProfile:
        """Load a py-spy ``--format raw --threads`` file."""
        profile = cls()
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            profile.add(stack.split(";"), int(count_text))
        return profile

    def add(self, frames: list[str], count: int) -> None:
        thread_match = _THREAD.match(frames[0]) if frames else None
        if thread_match is not None:
            thread = thread_match["name"] or "unnamed"
            frames = frames[1:]
        else:
            thread = "all threads"
        if not frames:
            return
        if thread == "MainThread" or frames[0].startswith("<module> (manage.py"):
            # py-spy names threads only once it has seen them start; the main thread is
            # recognisable by its outermost frame.
            in_loop = any(f.startswith("Worker.run ") for f in frames)
            thread = "MainThread: claim loop" if in_loop else STARTUP
        self.all_samples += count
        self.by_thread[thread] += count
        if thread == STARTUP:
            return  # a one-off cost: keep it out of the steady-state hot spots
        keys = [_frame_key(f) for f in frames]
        self.samples += count
        self.own[keys[-1]] += count
        self.by_layer[_layer(keys[-1][1])] += count
        for key in set(keys):
            self.inclusive[key] += count

    def report(self, top: int, mode: str) -> list[str]:
        """The summary as printable lines; ``mode`` says what py-spy sampled."""
        what = {
            "gil": "GIL-holding (Python CPU)",
            "active": "active-thread",
            "wall": "wall-clock (waiting threads included)",
        }[mode]
        lines = [f"py-spy: {self.all_samples:,} {what} samples of the worker"]
        lines += ["  by thread:"]
        lines += self._shares(self.by_thread.most_common(), self.all_samples)
        lines += [
            f"  below, shares of the {self.samples:,} samples after start-up",
            "  own time by layer (the innermost frame's package):",
        ]
        lines += self._shares(self.by_layer.most_common())
        lines += [f"  top {top} functions by own time:"]
        lines += self._shares([(_name(k), n) for k, n in self.own.most_common(top)])
        ours = [(k, n) for k, n in self.inclusive.most_common() if k[1].startswith("taskqueue/")]
        lines += [f"  top {top} taskqueue functions by inclusive time (callees included):"]
        lines += self._shares([(_name(k), n) for k, n in ours[:top]])
        return lines

    def _shares(self, items: list[tuple[str, int]], whole: int | None = None) -> list[str]:
        whole = whole or self.samples or 1
        return [f"    {n / whole * 100:5.1f}%  {name}" for name, n in items]


def _name(key: tuple[str, str]) -> str:
    function, file = key
    return f"{function} ({file})" if file else function
