"""Numpy arrays in POSIX shared memory: created and unlinked by the coordinator alone.

Names are per run and say who made them: ``dpnet_<creator pid>_<random>_<tag>``, so a
sweep can tell a dead run's leftovers (``sweep_stale``) from a live run's segments.

Cleanup, on every ending of the creator:
- normal code paths: ``unlink()`` (idempotent) or the context manager;
- interpreter exit with segments still owned (exception, SystemExit, KeyboardInterrupt):
  an ``atexit`` hook unlinks everything this process created and has not unlinked;
- the creator killed outright (SIGKILL, OOM, or SIGTERM without a handler): the
  creator's multiprocessing resource tracker -- a separate process that ignores SIGINT
  and SIGTERM -- unlinks what was registered once every process sharing it has exited
  (it prints a "leaked shared_memory objects" warning, which is deserved then).

Attaching must not register with the resource tracker: a ``spawn`` child shares its
parent's tracker, so a registration (or the usual "unregister after attach" fix) would
corrupt the creator's entry -- the tracker then prints a KeyError at the creator's
unlink and loses the crash cleanup. On Python >= 3.13 ``track=False`` says so; before,
registration is suppressed for the duration of the attach.
"""
from __future__ import annotations

import atexit
import os
import re
import secrets
import sys
import threading
from math import prod
from multiprocessing import resource_tracker, shared_memory

import numpy as np

PREFIX = "dpnet_"
_TAG = re.compile(r"[A-Za-z0-9]{1,16}")
_NAME = re.compile(r"dpnet_(\d+)_[0-9a-f]+_[A-Za-z0-9]+")

_owned = {}                   # name -> SharedArray created (and not yet unlinked) here
_owned_lock = threading.Lock()
_attach_lock = threading.Lock()


class _Segment(shared_memory.SharedMemory):
    """SharedMemory whose close() never fails because numpy views are still alive.

    The stock close() raises BufferError then, and so does its __del__ (as noise at
    interpreter exit, in every worker that did not close first). Instead the mapping is
    handed over to the views: it is unmapped when the last of them dies.
    """

    def close(self):
        try:
            super().close()
        except BufferError:
            self._buf = None
            self._mmap = None
            super().close()          # closes the file descriptor only

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def _open_untracked(name):
    if sys.version_info >= (3, 13):
        return _Segment(name=name, track=False)
    with _attach_lock:
        # SharedMemory.__init__ calls resource_tracker.register unconditionally on <3.13.
        original = resource_tracker.register
        resource_tracker.register = lambda *args, **kwargs: None
        try:
            return _Segment(name=name)
        finally:
            resource_tracker.register = original


class SharedMemoryFull(ValueError):
    """The shared-memory filesystem has too little room for what a run needs."""

    def __init__(self, need, free, cause=None):
        self.need, self.free = need, free
        why = f" ({cause.strerror})" if cause is not None and cause.strerror else ""
        super().__init__(
            f"shared memory: this run needs {_mib(need)} in {SHM_DIR}, which has "
            f"{_mib(free)} free{why}; train in one process (--workers 0), give it a larger "
            f"{SHM_DIR} (docker run --shm-size=1g ...), or use less data (--limit-train)")


SHM_DIR = "/dev/shm"


def _mib(n):
    return f"{n / 2**20:,.0f} MiB" if n >= 2**20 else f"{n:,} bytes"


def room(directory=SHM_DIR):
    """Bytes free in the shared-memory filesystem (0 if it cannot be read)."""
    try:
        st = os.statvfs(directory)
    except OSError:
        return 0
    return st.f_bavail * st.f_frsize


def check_room(nbytes, directory=SHM_DIR):
    """SharedMemoryFull, naming both sizes, unless ``nbytes`` fit (with 1% and one page
    to spare, for the filesystem's own rounding)."""
    free = room(directory)
    if nbytes + nbytes // 100 + 4096 > free:
        raise SharedMemoryFull(nbytes, free)


def _normalize(shape, dtype):
    shape = (int(shape),) if np.isscalar(shape) else tuple(int(s) for s in shape)
    if any(s < 0 for s in shape):
        raise ValueError(f"shape must be non-negative, got {shape!r}")
    dtype = np.dtype(dtype)
    if dtype.hasobject:
        raise ValueError(f"shared memory cannot hold Python objects, got dtype {dtype!r}")
    return shape, dtype


class SharedArray:
    """A numpy array whose memory is a named shared-memory segment.

    Use ``SharedArray.create`` in the coordinator, ``SharedArray.attach`` in workers
    (with the ``name``, ``shape``, ``dtype`` of ``describe()``). ``array`` is the view;
    it is invalid after ``close()``.
    """

    def __init__(self, shm, shape, dtype, owner):
        self._shm = shm
        self.name = shm.name.lstrip("/")
        self.shape, self.dtype = shape, dtype
        self.owner = owner
        self._unlinked = False
        self._closed = False
        # frombuffer holds a buffer export on the mapping, so close() cannot unmap it under
        # a live view (np.ndarray(buffer=...) holds none: a later access would segfault).
        self.array = np.frombuffer(shm.buf, dtype=dtype, count=prod(shape)).reshape(shape)

    @classmethod
    def create(cls, shape, dtype, name=None, tag="arr"):
        """A new zero-filled segment; ``name`` defaults to a fresh per-run name."""
        shape, dtype = _normalize(shape, dtype)
        if name is None:
            if not _TAG.fullmatch(tag):
                raise ValueError(f"tag must be 1-16 ASCII letters/digits, got {tag!r}")
            name = f"{PREFIX}{os.getpid()}_{secrets.token_hex(4)}_{tag}"
        nbytes = prod(shape) * dtype.itemsize
        # A segment cannot be empty; an empty array still gets a (1-byte) name to share.
        shm = _Segment(name=name, create=True, size=max(nbytes, 1))
        self = cls(shm, shape, dtype, owner=True)
        # owned from here on: a Ctrl-C in the (long, for a big segment) fill below
        # leaves it to cleanup_owned, not to the resource tracker's leak warning
        with _owned_lock:
            _owned[self.name] = self
        try:
            # Back every page now: a tmpfs segment is sized but filled lazily, and the
            # first write past the free space would kill the writer with SIGBUS.
            os.posix_fallocate(shm._fd, 0, max(nbytes, 1))
        except OSError as e:
            self.unlink()
            self.close()
            raise SharedMemoryFull(nbytes, room(), e) from None
        self.array.fill(0)   # fresh pages are zero on Linux; say so for other systems
        return self

    @classmethod
    def from_array(cls, arr, tag="arr"):
        """A new segment holding a copy of ``arr``."""
        arr = np.asarray(arr)
        self = cls.create(arr.shape, arr.dtype, tag=tag)
        self.array[...] = arr
        return self

    @classmethod
    def attach(cls, name, shape, dtype):
        """Map an existing segment made by another process; never unlinks it."""
        shape, dtype = _normalize(shape, dtype)
        shm = _open_untracked(name)
        nbytes = prod(shape) * dtype.itemsize
        if shm.size < nbytes:
            shm.close()
            raise ValueError(
                f"segment {name!r} has {shm.size} bytes, {dtype.str}{list(shape)} needs {nbytes}")
        return cls(shm, shape, dtype, owner=False)

    @classmethod
    def attach_described(cls, desc):
        """``attach`` from a ``describe()`` dict (as it arrives in a WELCOME config)."""
        try:
            return cls.attach(desc["name"], desc["shape"], desc["dtype"])
        except (KeyError, TypeError) as e:
            raise ValueError(f"bad shared array description {desc!r}: {e}") from None

    def describe(self):
        """Plain (msgpack-able) facts a worker needs to attach."""
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype.str}

    @property
    def nbytes(self):
        return prod(self.shape) * self.dtype.itemsize

    def close(self):
        """Unmap this process's view. Idempotent; ``array`` is None afterwards."""
        if self._closed:
            return
        self._closed = True
        self.array = None
        self._shm.close()      # views still alive elsewhere keep the mapping (see _Segment)

    def unlink(self):
        """Remove the segment's name (creator only). Idempotent; mappings stay valid."""
        if not self.owner:
            raise RuntimeError(f"only the creating process may unlink {self.name!r}")
        if self._unlinked:
            return
        self._unlinked = True
        with _owned_lock:
            _owned.pop(self.name, None)
        try:
            self._shm.unlink()   # also unregisters it from the resource tracker
        except FileNotFoundError:
            # Someone removed the name already (a sweep, a person); keep the tracker in step.
            resource_tracker.unregister(self._shm._name, "shared_memory")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.owner:
            self.unlink()
        self.close()

    def __repr__(self):
        role = "owner" if self.owner else "attached"
        return f"SharedArray({self.name!r}, {self.dtype.str}{list(self.shape)}, {role})"


def cleanup_owned():
    """Unlink every segment this process created and has not unlinked; returns their names.

    Runs at exit; call it from a signal handler's cleanup path too.
    """
    with _owned_lock:
        arrays = list(_owned.values())
    for a in arrays:
        try:
            a.unlink()
        except OSError:
            pass
    return [a.name for a in arrays]


atexit.register(cleanup_owned)


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale(directory=SHM_DIR, dry_run=False):
    """Unlink dpnet segments whose creator process no longer exists (a run killed with
    its resource tracker: SIGKILL to the group, the OOM killer, a closed terminal
    before SIGHUP was handled); returns [(name, bytes)] of what was (or, with
    ``dry_run``, would be) removed. A reused pid keeps its segments (we cannot tell),
    which errs on the safe side."""
    try:
        entries = os.listdir(directory)
    except FileNotFoundError:
        return []
    removed = []
    for entry in sorted(entries):
        m = _NAME.fullmatch(entry)
        if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
            path = os.path.join(directory, entry)
            try:
                size = os.stat(path).st_blocks * 512
                if not dry_run:
                    os.unlink(path)
                removed.append((entry, size))
            except OSError:
                pass
    return removed
