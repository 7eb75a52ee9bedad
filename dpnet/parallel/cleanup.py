"""What runs that are gone left behind: shared-memory segments and ipc socket
directories whose creating process no longer exists (killed with SIGKILL, by the OOM
killer, with its whole process group). Every coordinator sweeps them when it starts;
``python -m dpnet clean`` does it on demand."""
from __future__ import annotations

from .shm import sweep_stale
from .transport import sweep_stale_dirs


def sweep(dry_run=False):
    """{"segments": [(name, bytes)], "dirs": [path], "bytes": total} of what was (or,
    with ``dry_run``, would be) removed."""
    segments = sweep_stale(dry_run=dry_run)
    dirs = sweep_stale_dirs(dry_run=dry_run)
    return {"segments": segments, "dirs": dirs, "bytes": sum(b for _, b in segments)}


def describe(report, dry_run=False):
    """One line for a sweep's report, or None when there was nothing."""
    n, d = len(report["segments"]), len(report["dirs"])
    if not n and not d:
        return None
    what = []
    if n:
        what.append(f"{n} shared-memory segment{'s' if n != 1 else ''} "
                    f"({report['bytes'] / 2**20:,.1f} MiB)")
    if d:
        what.append(f"{d} socket director{'ies' if d != 1 else 'y'}")
    verb = "would remove" if dry_run else "removed"
    return f"{verb} {' and '.join(what)} left by runs that are gone"
