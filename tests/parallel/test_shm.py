"""SharedArray across real processes: visibility, cleanup on every ending, a quiet resource tracker."""
import multiprocessing as mp
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from dpnet.parallel.shm import SharedArray, cleanup_owned, sweep_stale

SHM = pathlib.Path("/dev/shm")
HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
pytestmark = pytest.mark.skipif(not SHM.is_dir(), reason="needs /dev/shm (Linux)")


def _segments(pid):
    return sorted(p.name for p in SHM.glob(f"dpnet_{pid}_*"))


def _child_write(desc, value, done):
    # Runs in a spawned worker: attach, write, close -- never unlink.
    a = SharedArray.attach_described(desc)
    a.array[...] = value
    a.close()
    done.set()


@pytest.fixture(autouse=True)
def no_leftovers():
    yield
    cleanup_owned()
    assert _segments(os.getpid()) == []


def test_create_attach_close_unlink_in_one_process():
    with SharedArray.create((3, 4), np.float32, tag="w") as a:
        assert a.name.startswith(f"dpnet_{os.getpid()}_") and a.name.endswith("_w")
        assert (SHM / a.name).exists()
        assert a.array.shape == (3, 4) and a.array.dtype == np.float32 and not a.array.any()
        b = SharedArray.attach(a.name, (3, 4), "float32")
        b.array[1, 2] = 5.0
        assert a.array[1, 2] == 5.0
        with pytest.raises(RuntimeError, match="only the creating process"):
            b.unlink()
        b.close()
        b.close()                                   # idempotent
        assert b.array is None
    assert not (SHM / a.name).exists()
    a.unlink()                                      # idempotent after the context exit


def test_from_array_describe_and_size_checks():
    src = np.arange(12, dtype=np.int64).reshape(3, 4)
    with SharedArray.from_array(src, tag="data") as a:
        desc = a.describe()
        assert desc == {"name": a.name, "shape": [3, 4], "dtype": "<i8"}
        with SharedArray.attach_described(desc) as b:
            np.testing.assert_array_equal(b.array, src)
        with pytest.raises(ValueError, match="needs 192"):
            SharedArray.attach(a.name, (4, 6), np.int64)
        with pytest.raises(ValueError, match="bad shared array description"):
            SharedArray.attach_described({"name": a.name})


def test_empty_array_and_bad_arguments():
    with SharedArray.create((0, 5), np.float64) as a:
        assert a.array.shape == (0, 5) and a.nbytes == 0
    with pytest.raises(ValueError, match="non-negative"):
        SharedArray.create((-1,), np.float32)
    with pytest.raises(ValueError, match="Python objects"):
        SharedArray.create((2,), object)
    with pytest.raises(ValueError, match="tag must be"):
        SharedArray.create((2,), np.float32, tag="no/slash")
    with pytest.raises(FileNotFoundError):
        SharedArray.attach("dpnet_0_00000000_missing", (1,), np.float32)


def test_close_with_live_views_does_not_break():
    a = SharedArray.create((4,), np.float32)
    view = a.array[1:]
    a.close()                         # the mapping lives on for `view`
    view[:] = 2.0
    assert view.sum() == 6.0
    a.unlink()
    del view


@pytest.mark.timeout(30)
def test_spawned_child_writes_and_parent_sees_it():
    ctx = mp.get_context("spawn")
    with SharedArray.create((1000,), np.float32, tag="params") as a:
        done = ctx.Event()
        p = ctx.Process(target=_child_write, args=(a.describe(), 3.5, done))
        p.start()
        assert done.wait(20)
        p.join(10)
        assert p.exitcode == 0
        assert (a.array == 3.5).all()


def _run_script(body, timeout=30):
    script = textwrap.dedent(f"""
        import sys
        sys.path[:0] = [{str(ROOT)!r}, {str(HERE)!r}]
    """) + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=timeout, cwd=str(ROOT))


def _quiet(stderr):
    return not any(w in stderr for w in ("resource_tracker", "leaked", "KeyError", "Traceback",
                                         "Warning"))


@pytest.mark.timeout(60)
def test_whole_run_in_a_fresh_interpreter_is_clean():
    # A fresh interpreter, so the resource tracker's own stderr is captured as well: the
    # naive "unregister after attach" makes it print a KeyError at the creator's unlink.
    r = _run_script("""
        import multiprocessing as mp, os
        import numpy as np
        from dpnet.parallel.shm import SharedArray
        from test_shm import _child_write
        if __name__ == "__main__":
            ctx = mp.get_context("spawn")
            a = SharedArray.create((8,), np.float64, tag="x")
            done = ctx.Event()
            procs = [ctx.Process(target=_child_write, args=(a.describe(), 7.0, done))
                     for _ in range(2)]
            for p in procs: p.start()
            for p in procs: p.join(20)
            print("sum", a.array.sum(), [p.exitcode for p in procs], os.getpid())
            a.close(); a.unlink()
    """)
    assert r.returncode == 0, r.stderr
    out = r.stdout.split()
    assert out[:2] == ["sum", "56.0"] and "[0, 0]" in r.stdout
    assert _quiet(r.stderr), r.stderr
    assert _segments(out[-1]) == []


@pytest.mark.timeout(60)
def test_exit_without_unlink_is_cleaned_by_atexit():
    r = _run_script("""
        import os
        import numpy as np
        from dpnet.parallel.shm import SharedArray
        a = SharedArray.create((8,), np.float32, tag="a")
        b = SharedArray.from_array(np.ones(3), tag="b")
        print(os.getpid())
        raise SystemExit(3)
    """)
    assert r.returncode == 3
    assert _quiet(r.stderr), r.stderr
    assert _segments(r.stdout.split()[-1]) == []


@pytest.mark.timeout(60)
def test_ctrl_c_while_a_segment_is_made_leaves_it_to_our_cleanup():
    # a real SIGINT arriving after the segment exists, while its pages are backed
    # (for a large array the longest part of making it): ours to remove at exit, not
    # left to the resource tracker's "leaked shared_memory objects" warning
    r = _run_script("""
        import os, signal
        import numpy as np
        from dpnet.parallel.shm import SharedArray
        fallocate = os.posix_fallocate
        def ctrl_c_first(*a):
            os.kill(os.getpid(), signal.SIGINT)
            return fallocate(*a)
        os.posix_fallocate = ctrl_c_first
        print(os.getpid())
        try:
            SharedArray.create((1 << 20,), np.float32, tag="c")
        except KeyboardInterrupt:
            raise SystemExit(130)
    """)
    assert r.returncode == 130, r.stderr
    assert _quiet(r.stderr), r.stderr
    assert _segments(r.stdout.split()[-1]) == []


@pytest.mark.timeout(60)
def test_killed_creator_is_cleaned_by_the_resource_tracker():
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, os, time
            sys.path.insert(0, {str(ROOT)!r})
            from dpnet.parallel.shm import SharedArray
            a = SharedArray.create((1024,), "float32", tag="k")
            print(a.name, flush=True)
            time.sleep(60)
        """)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        name = proc.stdout.readline().strip()
        assert (SHM / name).exists()
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        deadline = time.monotonic() + 10
        while (SHM / name).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not (SHM / name).exists()
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()


@pytest.mark.timeout(30)
def test_sweep_stale_removes_only_dead_creators_segments():
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)
    stale = SHM / f"dpnet_{dead_pid}_deadbeef_x"
    stale.write_bytes(b"\0" * 8)
    try:
        with SharedArray.create((2,), np.float32) as mine:
            assert stale.name in [n for n, _ in sweep_stale(dry_run=True)]
            assert stale.exists()
            removed = dict(sweep_stale())
            assert stale.name in removed and mine.name not in removed
            assert removed[stale.name] == 4096          # the page it holds
            assert (SHM / mine.name).exists() and not stale.exists()
    finally:
        stale.unlink(missing_ok=True)
