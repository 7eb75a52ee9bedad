"""What the command-line front ends share: argument types, the one-line error
policy (``guarded``), output-path checks, JSON summaries, plots, size checks.

User errors (bad flags, missing data, a checkpoint that does not fit) end with ONE
line on stderr and exit code 2; a worker failure with exit code 1; Ctrl-C before or
after training, or a second one during it, with 130. A traceback means a bug in dpnet.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import signal
import sys
import tempfile

import numpy as np

from ..engines.errors import WorkerError, WorkerUserError
from ..storage.atomic import atomic_write
from ..storage.checkpoint import LAST_WRITTEN, CheckpointError, read_checkpoint_meta


class UserError(Exception):
    """A problem with what the user asked for; reported in one line, exit code 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message):
        # argparse prints the whole usage block; one line says it better.
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def flag_name(attr):
    """The command-line flag of an argparse attribute: ``elastic_alpha`` -> ``--elastic-alpha``."""
    return "--" + attr.replace("_", "-")


def given_flags(args, parser):
    """The attributes of ``args`` whose values are not ``parser``'s defaults: the flags
    given (one given at its default value cannot be told apart, and does not count)."""
    defaults = vars(parser.parse_args([]))
    return {k for k, v in vars(args).items() if k in defaults and v != defaults[k]}


def path_arg(s):
    """A file or directory argument: an empty string is a mistake, not "none"."""
    if not s.strip():
        raise argparse.ArgumentTypeError("expected a path, got an empty string")
    return s


def _int_at_least(lo, what):
    def parse(s):
        try:
            v = int(s)
        except ValueError:
            v = None
        if v is None or v < lo:
            raise argparse.ArgumentTypeError(f"expected {what} integer, got {s!r}")
        return v
    return parse


positive_int = _int_at_least(1, "a positive")
nonneg_int = _int_at_least(0, "a non-negative")


def float_in(lo, hi=None, lo_open=False, hi_open=False):
    def parse(s):
        try:
            v = float(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
        if v == 0 and any(c in "123456789" for c in s.lower().split("e")[0]):
            # 1e-400: not 0 as written, but 0 as a float (where 0 may mean "off")
            raise argparse.ArgumentTypeError(f"{s!r} is too small to be told from 0")
        ok = (v > lo if lo_open else v >= lo) and (
            hi is None or (v < hi if hi_open else v <= hi)) and np.isfinite(v)
        if not ok:
            rng = f"{'(' if lo_open else '['}{lo}, {hi if hi is not None else 'inf'}" \
                  f"{')' if hi_open or hi is None else ']'}"
            raise argparse.ArgumentTypeError(f"expected a number in {rng}, got {s!r}")
        return v
    return parse


def check_output_paths(args, flags, inputs=()):
    """Refuse unusable output paths before any work is done, not after it: a directory,
    a missing or unwritable directory, two outputs naming one file, an output that is
    one of the run's ``inputs`` (flag names; ``--save`` may be ``--load``: a run
    continues in place), a checkpoint onto something that is not a regular file."""
    seen = {}
    for flag in list(flags) + list(inputs):
        path = getattr(args, flag, None)
        if path is None or (flag == "json" and path == "-"):
            continue
        real = os.path.realpath(path)
        other = seen.get(real)
        if other is not None and not {other, flag} == {"save", "load"}:
            raise UserError(f"--{flag} and --{other} name the same file {path!r}; each "
                            f"needs its own")
        seen.setdefault(real, flag)
    for flag in flags:
        path = getattr(args, flag, None)
        if path is None or (flag == "json" and path == "-"):
            continue
        if path == "-":
            raise UserError(f"--{flag} needs a file name (- is standard output, for --json)")
        if os.path.isdir(path):
            raise UserError(f"--{flag} {path!r} is a directory; give a file name")
        if flag == "save" and os.path.exists(path) and not os.path.isfile(path):
            raise UserError(f"--save {path!r} is not a regular file")
        d = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(d):
            raise UserError(f"--{flag} {path!r}: directory {d!r} does not exist")
        if not os.access(d, os.W_OK):
            raise UserError(f"--{flag} {path!r}: directory {d!r} is not writable")
        if os.path.exists(path) and not os.path.isfile(path):
            continue                  # a device, a pipe: written in place (atomic_write)
        real = os.path.dirname(os.path.realpath(path))     # where atomic_write writes
        try:                          # what access() cannot tell (/sys, a read-only mount,
            # root's rights): make a file there, as the run will
            fd, probe = tempfile.mkstemp(dir=real, prefix=".dpnet-probe-")
            os.close(fd)
            os.unlink(probe)
        except OSError as e:
            raise UserError(f"--{flag} {path!r}: cannot write in {real!r} "
                            f"({e.strerror or e})") from None


def strict_json(obj):
    """``obj`` with NumPy scalars as Python numbers and every NaN or infinity as None:
    JSON has no such numbers (Python writes a bare ``NaN`` that other readers refuse),
    and a value not measured -- a test loss in an epoch that did not report it, a class
    absent from a test set -- is ``null``."""
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    if isinstance(obj, (np.integer, np.bool_)):
        return obj.item()
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj


def write_json(path, obj):
    """Atomically write ``obj`` as strict JSON (``strict_json``) to ``path`` ("-":
    standard output). A file that cannot be written is named in the error (a full
    disk, a read-only place)."""
    obj = strict_json(obj)

    def dump(f):
        json.dump(obj, f, indent=2, default=float, allow_nan=False)
    if path == "-":
        dump(sys.stdout)
        sys.stdout.write("\n")
        sys.stdout.flush()
        return
    try:
        atomic_write(path, dump, binary=False)
    except OSError as e:
        raise OSError(f"cannot write --json {path!r}: {e.strerror or e}") from None


def platform_info():
    """The versions a --json summary records beside its figures."""
    return {"python": platform.python_version(), "numpy": np.__version__,
            "machine": platform.machine()}


def write_failure_json(args, prog, error, progress):
    """--json for a run that training ended with an error -- it diverged
    (``FloatingPointError``) or a worker failed: the run's ``progress`` until then
    (steps, losses, timings) and the error, so that a sweep finds one summary per run
    whatever its end. The run's own error stays what it reports: a summary that cannot
    be written is a note."""
    summary = {"error": str(error), "diverged": isinstance(error, FloatingPointError),
               **progress, "args": vars(args), "platform": platform_info()}
    try:
        write_json(args.json, summary)
    except OSError as e:
        print(f"{prog}: note: {e}", file=sys.stderr)


def json_on_stdout(path):
    """Whether --json ``path`` is standard output ("-", /dev/stdout): the human-readable
    lines then go to stderr, so that stdout holds the JSON alone."""
    if path is None:
        return False
    if path == "-":
        return True
    try:
        return os.path.samestat(os.stat(path), os.fstat(sys.stdout.fileno()))
    except (OSError, ValueError, AttributeError):
        return False


def pyplot():
    """matplotlib.pyplot on a file-only backend, or a one-line UserError. Called before
    training too, so a missing matplotlib is not discovered after an hour's run."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("--plot needs matplotlib: pip install 'dpnet[plot]'") from None
    return plt


def plot_format(path):
    """The image format --plot PATH asks for (its extension; png without one), checked
    against what matplotlib can write -- before training, not after."""
    plt = pyplot()
    ext = os.path.splitext(path)[1][1:].lower() or "png"
    formats = plt.figure().canvas.get_supported_filetypes()
    plt.close("all")
    if ext not in formats:
        raise UserError(f"--plot {path!r}: matplotlib cannot write .{ext} files; use one "
                        f"of {', '.join('.' + f for f in sorted(formats))}")
    return ext


def save_figure(fig, path):
    """Write ``fig`` to ``path`` atomically, in the format its extension names."""
    fmt = plot_format(path)
    try:
        atomic_write(path, lambda f: fig.savefig(f, format=fmt, dpi=100))
    except OSError as e:          # (checked before training; a disk that filled since)
        raise OSError(f"cannot write --plot {path!r}: {e.strerror or e}") from None


def memory_message(e):
    """One line for an allocation that failed (numpy names the size it wanted)."""
    what = str(e).split(":")[0].strip() or "an allocation failed"
    return f"out of memory ({what}); use smaller layers, batches or --workers"


def raise_exit(signum, frame):
    print(f"{os.path.basename(sys.argv[0]) or 'dpnet'}: stopped by "
          f"{signal.Signals(signum).name}", file=sys.stderr)
    raise SystemExit(128 + signum)


MAX_WORKERS_PER_CPU = 4


def cap_workers(workers, per_step, unit, prog):
    """More workers than a step has samples (streams) would sit idle, each a whole
    interpreter to start: use as many as there is work for, and say so. More workers
    than CPUs share them (a note); more than four per CPU is refused: each is a whole
    process, and they would only wait for each other."""
    cpus = os.cpu_count() or 1
    if workers > MAX_WORKERS_PER_CPU * cpus:
        raise UserError(f"--workers {workers} is more than {MAX_WORKERS_PER_CPU} per CPU "
                        f"({cpus} here); use at most {MAX_WORKERS_PER_CPU * cpus}")
    if workers > per_step:
        print(f"{prog}: note: --workers {workers} is more than the {per_step} {unit} of a "
              f"step; using {per_step}", file=sys.stderr)
        workers = per_step
    if workers > cpus:
        print(f"{prog}: note: --workers {workers} is more than this machine's {cpus} CPUs; "
              f"they will share them", file=sys.stderr)
    return workers


def check_model_size(n_params, dtype, what):
    """Refuse, in one line, a model that cannot fit: parameters, gradients and two
    optimizer moments are four vectors of ``n_params`` before any activation."""
    import psutil
    need = 4 * int(n_params) * np.dtype(dtype).itemsize
    have = psutil.virtual_memory().total
    if need > have:
        raise UserError(f"{what}: {n_params:,} parameters need at least "
                        f"{need / 2**30:,.1f} GiB, more than this machine's "
                        f"{have / 2**30:,.1f} GiB")


def device_line(prog, say, first=None):
    """An ``on_hello`` for the coordinator: one line naming a worker's device, after
    ``first()``'s line if given -- said once the worker is up, not before a worker
    that cannot start (no GPU: one error line, nothing else)."""
    def announce(rank, header):
        if first is not None:
            say(f"{prog}: {first()}")
        d = header.get("device")
        if isinstance(d, dict):
            gib = lambda b: f"{b / 2**30:,.1f} GiB"             # noqa: E731
            say(f"{prog}: device {d.get('index')}: {d.get('name')}, "
                f"{gib(d.get('memory_total', 0))} ({gib(d.get('memory_free', 0))} free)")
    return announce


class SafeStream:
    """A text stream whose writes never raise: once a terminal has hung up (EIO) or a
    pipe closed (EPIPE), the rest of the output goes nowhere and the run goes on to
    its clean stop -- saving, stopping workers, removing shared memory."""

    def __init__(self, stream):
        self.stream, self.dead = stream, False

    def write(self, text):
        if not self.dead:
            try:
                return self.stream.write(text)
            except (OSError, ValueError):       # EIO, EPIPE; or a closed file
                self.dead = True
        return len(text)

    def flush(self):
        if not self.dead:
            try:
                self.stream.flush()
            except (OSError, ValueError):
                self.dead = True

    def __getattr__(self, name):
        return getattr(self.stream, name)


def _safe_streams():
    """Wrap stdout and stderr; returns a function that puts them back (or, if they
    died, points them at /dev/null, so the interpreter's last flush cannot fail)."""
    wrapped = [SafeStream(sys.stdout), SafeStream(sys.stderr)]
    sys.stdout, sys.stderr = wrapped

    def restore():
        out, err = (open(os.devnull, "w") if w.dead else w.stream for w in wrapped)
        sys.stdout, sys.stderr = out, err
    return restore


class SaveLock:
    """An exclusive lock on a checkpoint path for the length of a run, so that two runs
    with the same --save cannot both write it (the last one silently winning): a
    ``PATH.lock`` file, flock()ed, holding the owner's pid. The kernel drops the lock
    when its process ends, however it ends."""

    def __init__(self, path):
        import fcntl
        # the file the checkpoint will really be written to: another name for it (a
        # link, a path through one) is the same checkpoint
        self.path = os.path.realpath(os.fspath(path)) + ".lock"
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:      # a place no file can be made in: name the flag's path
            raise UserError(f"--save {os.fspath(path)!r}: cannot create a file beside it "
                            f"({e.strerror or e})") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(self.fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(self.fd)
            raise UserError(f"--save {os.fspath(path)!r} is being written by another run "
                            f"(pid {holder}); give this run its own file") from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def release(self):
        if self.fd is not None:
            try:
                os.unlink(self.path)
            except OSError:
                pass
            os.close(self.fd)
            self.fd = None


def guarded(prog, run, *args):
    """``run(*args)``'s exit code, with every way it can end that is not a bug turned
    into one line on stderr. SIGTERM, SIGHUP and SIGQUIT outside the training loop
    (which stops gracefully on them) still run the clean-up path: workers stopped,
    shared memory unlinked; output to a terminal that hung up is dropped, not fatal."""
    old = {sig: signal.signal(sig, raise_exit)
           for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)}
    LAST_WRITTEN.clear()                    # this run's checkpoints only
    restore = _safe_streams()
    try:
        # a diverging run is reported once, as a non-finite loss, not as a stream of
        # overflow warnings first
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            return run(*args)
    except WorkerUserError as e:            # no usable device, data that does not fit
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except WorkerError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        if e.traceback:
            print(f"worker traceback:\n{e.traceback.rstrip()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # a second Ctrl-C (the first asks for a clean stop), or one before training began
        saved = ""
        if LAST_WRITTEN:            # what is on disk, whatever the run had time to say:
            path = LAST_WRITTEN[0]  # read back (a save the signal cut short left the last)
            try:
                training = read_checkpoint_meta(path).get("training")
                step = training.get("step") if isinstance(training, dict) else None
                saved = f"; {path} holds the weights of " + (
                    f"step {step}" if isinstance(step, int) else "its last save")
            except (CheckpointError, OSError):
                pass
        print(f"{prog}: interrupted{saved}", file=sys.stderr)
        return 130
    except MemoryError as e:
        print(f"{prog}: error: {memory_message(e)}", file=sys.stderr)
        return 2
    except (UserError, ValueError, OSError, FloatingPointError, ImportError) as e:
        # DataError, TextError, CheckpointError and argument checks are ValueErrors
        # naming the bad value; OSError covers unreadable inputs and unwritable outputs;
        # FloatingPointError is a diverged run (its message suggests a lower --lr);
        # ImportError a missing optional dependency (its message says what to install)
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        restore()


# -- workers on other machines (runDnn.py, runLstm.py) ------------------------------------
def tcp_endpoint(text):
    from ..parallel.transport import split_tcp
    try:
        split_tcp(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def add_remote_flags(a):
    """--worker-timeout, --remote-workers, --listen, --keys, --cluster, --join-timeout."""
    # at least a second: a shorter limit would replace healthy workers mid-step
    a("--worker-timeout", type=float_in(1), default=300.0, metavar="S",
      help="a worker that has not answered a step after S >= 1 seconds is replaced "
           "(dead or suspended workers are noticed at once; default: 300); a remote "
           "worker silent for min(S, 30) seconds is dropped")
    a("--remote-workers", type=positive_int, default=None, metavar="N",
      help="train with N workers on other machines (instead of local processes): "
           "wait for them at --listen; start each with dpnet-worker "
           "--connect tcp://THIS_HOST:PORT --keys DIR")
    a("--listen", type=tcp_endpoint, default=None, metavar="tcp://HOST:PORT",
      help="where remote workers connect (default: tcp://127.0.0.1:0, this machine "
           "only, any free port; any other address needs --keys)")
    a("--keys", type=path_arg, default=None, metavar="DIR",
      help="CURVE keys for remote workers (make them with: python -m dpnet keys DIR)")
    a("--cluster", default=None, metavar="ray[:ADDRESS]",
      help="let Ray place, start and restart the --remote-workers (a local Ray, or "
           "the cluster at ADDRESS; extra 'cluster'); keys are made for the run")
    a("--join-timeout", type=float_in(1), default=600.0, metavar="S",
      help="how long to wait for the remote workers to join, and for one to join "
           "when none is left (default: 600)")

def no_remote_flags(args):
    if getattr(args, "listen", None) is not None or getattr(args, "keys", None) is not None \
            or getattr(args, "cluster", None) is not None:
        raise UserError("--listen, --keys and --cluster are for remote workers: add "
                        "--remote-workers N")


def remote_engine(args, prog, per_step, unit):
    """A coordinator over --remote-workers workers that join at --listen (or that
    --cluster starts)."""
    from ..engines import worker_group
    from ..engines.coordinator import Coordinator
    from ..parallel.keys import KeysError
    local = args.workers or 0
    if args.remote_workers + local > per_step:
        raise UserError(f"--remote-workers {args.remote_workers}"
                        + (f" and --workers {local}" if local else "")
                        + f" are more than the {per_step} {unit} of a step")
    launcher = None
    if args.cluster is not None:
        kind, _, address = args.cluster.partition(":")
        if kind != "ray":
            raise UserError(f"--cluster takes ray or ray:ADDRESS, got {args.cluster!r}")
        from ..engines.ray_cluster import RayLauncher
        try:
            launcher = RayLauncher(address=address or None)
        except ValueError as e:
            raise UserError(str(e)) from None
    try:
        group = worker_group("remote", args.remote_workers, listen=args.listen,
                             keys=args.keys, launcher=launcher, local=local,
                             blas_threads=getattr(args, "blas_threads", None) or 1,
                             # where to connect, and who joined: shown even with --quiet
                             say=lambda line: print(f"{prog}: {line}", file=sys.stderr,
                                                    flush=True))
    except (ValueError, KeysError) as e:
        raise UserError(str(e)) from None
    timeout = getattr(args, "worker_timeout", 300.0)
    return Coordinator(group, on_failure=args.on_failure, step_timeout=timeout,
                       start_timeout=args.join_timeout, silence_timeout=min(30.0, timeout))
