"""Facts about the machine and the software, printed above the figures."""

from __future__ import annotations

import os
import platform
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def memory_gib() -> float | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    return None


def load_average() -> str:
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "unknown"
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def facts(database: str, server: str) -> list[tuple[str, str]]:
    """The header lines: when, on what hardware, with which software, against which database."""
    memory = memory_gib()
    return [
        ("date", datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")),
        ("cpu", f"{cpu_model()}, {os.cpu_count()} cores"),
        ("memory", f"{memory:.1f} GiB" if memory is not None else "unknown"),
        ("os", f"{platform.system()} {platform.release()}"),
        (
            "software",
            f"Python {platform.python_version()}, Django {package_version('django')}, "
            f"psycopg {package_version('psycopg')}, taskqueue {package_version('taskqueue')}",
        ),
        ("server", server),
        ("database", database),
        ("load average", f"{load_average()} (1, 5, 15 min) at start"),
    ]
