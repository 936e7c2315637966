"""How much memory this process holds, for the recycling ceiling (``MAX_MEMORY``)."""

from __future__ import annotations

import os
import resource

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_mib() -> float:
    """This process's resident memory now, in MiB."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * _PAGE_SIZE / 2**20
    except (OSError, ValueError, IndexError):
        # Not Linux: the peak is the best this platform says (KiB on Linux, bytes on macOS).
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if peak > 2**24 else peak / 2**10


def over_ceiling(ceiling_mib: float | None) -> bool:
    return ceiling_mib is not None and resident_mib() > ceiling_mib
