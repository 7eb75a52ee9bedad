"""Atomic file writes: a temporary file in the target's directory, fsynced, then renamed
over the target -- a crash or Ctrl-C mid-write leaves the previous file intact."""
from __future__ import annotations

import os
import signal
import stat
import tempfile


def atomic_write(path, write, binary=True):
    """Call ``write(f)`` on a temporary file, then move it to ``path`` in one step.

    A symbolic link is followed (its target is replaced, the link stays); a target that
    exists and is not a regular file (``/dev/stdout``, a FIFO) is written directly --
    renaming over it would replace the device instead of writing to it."""
    path = os.fspath(path)
    try:                         # os.stat follows links: /dev/stdout -> a pipe or a tty
        special = not stat.S_ISREG(os.stat(path).st_mode)
    except FileNotFoundError:
        special = False
    if special:
        with open(path, "wb" if binary else "w") as f:
            write(f)
        return
    path = os.path.realpath(path)     # a link to a regular file: replace its target
    directory = os.path.dirname(path)
    # Ctrl-C / SIGTERM wait until the file is whole and in place: files are written
    # exactly when the user most wants them (on the way out).
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".dpnet-", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)       # mkstemp makes 0600; give the usual mode
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
