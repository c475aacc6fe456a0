"""CPU time of processes, read from ``/proc/<pid>/stat`` (no psutil).

A snapshot maps a name (``api``, ``worker``, ``redis``...) to ``{pid: cpu_seconds}`` for every
live process of that name's process group (each predq child leads its own group, so a Celery
pool or uvicorn's workers are included). The difference of two snapshots is the CPU each
group spent in between, split into the group leader and the other members (for the worker:
the Celery consumer vs. the prefork pool processes).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from predq.procs import group_pids

_CLK = os.sysconf("SC_CLK_TCK")

Snapshot = dict[str, dict[int, float]]


def pid_cpu(pid: int) -> float | None:
    """utime + stime of ``pid`` in seconds (None when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2:].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / _CLK


def snapshot(groups: Mapping[str, int]) -> Snapshot:
    """CPU seconds of every live process of each named process group."""
    out: Snapshot = {}
    for name, pgid in groups.items():
        pids = group_pids(pgid) or [pgid]
        out[name] = {}
        for pid in pids:
            cpu = pid_cpu(pid)
            if cpu is not None:
                out[name][pid] = cpu
    return out


def resnapshot(before: Snapshot) -> Snapshot:
    """A new snapshot of the same pids as ``before`` (cheap: no scan of /proc)."""
    out: Snapshot = {}
    for name, pids in before.items():
        out[name] = {}
        for pid in pids:
            cpu = pid_cpu(pid)
            if cpu is not None:
                out[name][pid] = cpu
    return out


def delta(before: Snapshot, after: Snapshot, leaders: Mapping[str, int]
          ) -> dict[str, dict[str, float]]:
    """Seconds of CPU per group between two snapshots: total, leader, others."""
    out: dict[str, dict[str, float]] = {}
    for name, pids in after.items():
        leader = leaders.get(name)
        total = lead = 0.0
        for pid, cpu in pids.items():
            d = max(0.0, cpu - before.get(name, {}).get(pid, 0.0))
            total += d
            if pid == leader:
                lead += d
        out[name] = {"total": total, "leader": lead, "others": total - lead}
    return out
