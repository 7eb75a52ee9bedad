"""runDnn.py / runDnnDebug.py paths the flag tests leave out (issue 14): another MNIST
directory (--data, $DPNET_DATA), a worker that stays alive but never answers
(--worker-timeout), an allocation that fails (MemoryError), and a run stopped in the
middle of an epoch under the default annealed learning rate, resumed to the very
weights of the run that was never stopped -- in process and with workers."""
import json
import os
import re
import resource
import subprocess
import sys
import time

import numpy as np
import pytest

from dpnet.data import read_idx
from dpnet.data.mnist import FILES
from conftest import MNIST_DIR, ROOT, interrupt_when, write_idx

DNN = str(ROOT / "scripts" / "runDnn.py")
DEBUG = str(ROOT / "scripts" / "runDnnDebug.py")
pytestmark = pytest.mark.timeout(300)


def run(script, *args, env=None, timeout=240, **kw):
    return subprocess.run([sys.executable, script, *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT,
                          env=dict(os.environ, **(env or {})), **kw)


def arrays(path):
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files if k != "__meta__"}


def assert_same_checkpoint(a, b):
    a, b = arrays(a), arrays(b)
    assert sorted(a) == sorted(b)
    for k in a:
        assert np.array_equal(a[k], b[k]), k


def mnist_subset(directory, n_train, n_test, gz=False):
    """The first images of the bundled MNIST, written as the four IDX files."""
    directory.mkdir()
    sfx = ".gz" if gz else ""
    for key, stem in FILES.items():
        n = n_train if key.startswith("train") else n_test
        src = next(p for p in MNIST_DIR.iterdir() if p.name.startswith(stem))
        write_idx(directory / (stem + sfx), read_idx(src)[:n], gz)
    return directory


# -- --data and $DPNET_DATA ---------------------------------------------------------------
def test_data_reads_another_directory_and_beats_the_environment(tmp_path):
    mine = mnist_subset(tmp_path / "mine", 1200, 300, gz=True)
    other = mnist_subset(tmp_path / "other", 900, 150)
    common = ("--validation", 200, "--epochs", 1, "--hidden", 16, "--quiet")

    def summary(*args, env=None, script=DEBUG):
        out = tmp_path / "s.json"
        r = run(script, *common, *args, "--json", out, env=env)
        assert r.returncode == 0, r.stderr
        s = json.loads(out.read_text())
        return s["train"]["n"], s["val"]["n"], s["test"]["n"], s["test"]["loss"]

    flag = summary("--data", mine, env={"DPNET_DATA": str(other)})
    assert flag[:3] == (1000, 200, 300)                       # --data wins over the env
    assert summary(env={"DPNET_DATA": str(mine)}) == flag      # the env alone: same run
    assert summary(env={"DPNET_DATA": str(other)})[:3] == (700, 200, 150)
    # the workers read the same directory: the same numbers, to float32 rounding
    par = summary("--data", mine, "--workers", 1, script=DNN)
    assert par[:3] == flag[:3] and par[3] == pytest.approx(flag[3], rel=1e-5)


def test_data_that_is_not_mnist_is_one_line(tmp_path):
    bad = mnist_subset(tmp_path / "bad", 50, 20)
    (bad / FILES["test_labels"]).unlink()
    r = run(DEBUG, "--data", bad, "--epochs", 1, "--validation", 10)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert f"MNIST file {FILES['test_labels']}(.gz) not found in {bad}" in r.stderr


def test_data_paths_of_the_wrong_kind_and_nothing_to_train_say_what_they_are(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for args, said in ((["--data", "/dev/zero"], "MNIST directory /dev/zero is not a directory"),
                       (["--data", empty, "--target", "y"], f"CSV file {empty} is a directory"),
                       (["--data", "/dev/zero", "--target", "y"],
                        "CSV file /dev/zero is not a regular file")):
        r = run(DEBUG, *args, "--epochs", 1)
        assert r.returncode == 2 and r.stderr.strip() == f"runDnnDebug.py: error: {said}", \
            r.stderr
    r = run(DEBUG, "--epochs", 0, "--limit-train", 300, "--hidden", 8)
    assert r.returncode == 0 and "runDnnDebug.py: --epochs 0: nothing to train" in r.stdout
    assert "checkpoint" not in r.stdout


# -- --worker-timeout ---------------------------------------------------------------------
def test_a_worker_that_never_answers_is_replaced_after_worker_timeout(tmp_path):
    """One worker (whichever claims the armed file) stops answering at its third step
    while its heartbeats go on: after --worker-timeout seconds it is replaced, its
    shard re-run, and the run ends with the weights of a run nothing happened to."""
    common = ("--workers", 2, "--limit-train", 1200, "--validation", 200, "--hidden", 16,
              "--batch-size", 100, "--epochs", 1, "--quiet")
    assert run(DNN, *common, "--save", tmp_path / "calm.npz").returncode == 0
    armed = tmp_path / "armed"
    armed.touch()
    t0 = time.monotonic()
    r = run(DNN, *common, "--worker-timeout", 1.5, "--save", tmp_path / "hung.npz",
            env={"DPNET_FAULTS": f"hang_on=step,after=2,when={armed},consume=1"})
    took = time.monotonic() - t0
    assert r.returncode == 0, r.stderr
    assert not armed.exists()                                  # the fault did fire
    assert re.search(r"worker \d \(pid \d+\) did not answer within 1\.5 s; starting a "
                     r"replacement", r.stderr), r.stderr
    assert took >= 1.5                         # it waited the timeout, not less
    assert_same_checkpoint(tmp_path / "calm.npz", tmp_path / "hung.npz")


def test_worker_timeout_under_abort_names_the_worker(tmp_path):
    armed = tmp_path / "armed"
    armed.touch()
    r = run(DNN, "--workers", 2, "--limit-train", 1200, "--validation", 200, "--hidden", 16,
            "--epochs", 1, "--worker-timeout", 1, "--on-failure", "abort", "--save",
            tmp_path / "ab.npz",
            env={"DPNET_FAULTS": f"hang_on=step,after=1,when={armed},consume=1"})
    assert r.returncode == 1, r.stderr
    assert re.search(r"error: worker \d \(pid \d+\) did not answer within 1 s", r.stderr)
    assert "saved the last weights (step 1)" in r.stderr


# -- an allocation that fails -------------------------------------------------------------
def limit_address_space(gib):
    def apply():
        resource.setrlimit(resource.RLIMIT_AS, (int(gib * 2**30), int(gib * 2**30)))
    return apply


def test_out_of_memory_is_one_line_and_exit_2():
    """Layers that pass the up-front size check (they fit this machine's memory) but
    not the address space this process is given: numpy's MemoryError, as one line."""
    r = run(DEBUG, "--hidden", 20000, 20000, "--limit-train", 100, "--epochs", 1,
            "--validation", 0, preexec_fn=limit_address_space(2.5))
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert re.fullmatch(r"runDnnDebug\.py: error: out of memory \(Unable to allocate "
                        r"[\d.]+ GiB for an array with shape \(\d+,\) and data type "
                        r"float32\); use smaller layers, batches or --workers", lines[0])


# -- resume from the middle of an epoch ---------------------------------------------------
EPOCH = re.compile(r"^epoch\s+1/3 .* ([\d.]+)s$")
STEPS_PER_EPOCH = 100          # 5,000 training images in batches of 50


def stopped_mid_epoch(cmd):
    """Start ``cmd``, and half an epoch after the first epoch's line send SIGINT (the
    first Ctrl-C: finish the step, save, exit 130). Returns the step it saved, which
    is mid-epoch unless the stop landed exactly on the boundary (then None)."""
    def half_an_epoch_after_the_first(line):
        m = EPOCH.match(line.strip())
        if m:
            time.sleep(float(m.group(1)) / 2)
        return m is not None
    code, _, err = interrupt_when(cmd, half_an_epoch_after_the_first, cwd=ROOT)
    assert code == 130, err
    step = int(re.search(r"saved the last weights \(step (\d+)\)", err).group(1))
    assert STEPS_PER_EPOCH < step < 3 * STEPS_PER_EPOCH, (step, err)
    return None if step % STEPS_PER_EPOCH == 0 else step


@pytest.mark.parametrize("workers", [0, 2])
def test_a_run_stopped_mid_epoch_resumes_to_the_same_weights(tmp_path, workers):
    """The default annealed learning rate (1e-3 to 1e-5 over the run's epochs), dropout
    and reshuffling: the resumed run must pick up the epoch's order, the step's rate
    and the optimizer's moments exactly where they were -- and the epoch's sums so far,
    so that its history (the interrupted epoch's loss and accuracy too) is the same."""
    base = [sys.executable, DNN, "--workers", str(workers), "--limit-train", "6000",
            "--validation", "1000", "--hidden", "256", "64", "--batch-size", "50",
            "--dropout", "0.1", "--epochs", "3"]
    straight, cut = tmp_path / "straight.npz", tmp_path / "cut.npz"
    r = subprocess.run(base + ["--save", str(straight), "--quiet", "--json",
                               str(tmp_path / "straight.json")], capture_output=True,
                       text=True, cwd=ROOT, timeout=180)
    assert r.returncode == 0, r.stderr
    for _ in range(3):                         # a stop exactly on a boundary: try again
        step = stopped_mid_epoch(base + ["--save", str(cut)])
        if step is not None:
            break
        cut.unlink()
    assert step is not None, "three stops in a row landed on an epoch boundary"
    r = subprocess.run(base + ["--load", str(cut), "--save", str(cut), "--json",
                               str(tmp_path / "cut.json")],
                       capture_output=True, text=True, cwd=ROOT, timeout=180)
    assert r.returncode == 0, r.stderr
    assert "resumed" not in r.stdout                  # the epoch's line covers all of it
    assert_same_checkpoint(straight, cut)
    histories = [json.loads((tmp_path / f"{k}.json").read_text())["history"]
                 for k in ("straight", "cut")]
    for h in histories:
        del h["seconds"]
    assert histories[0] == histories[1]


# -- --patience in pieces -----------------------------------------------------------------
def test_patience_in_pieces_stops_where_the_uninterrupted_run_stops(tmp_path):
    """The checkpoint keeps --patience's state (best val_loss, its epoch and weights, the
    epochs since): a run resumed before the stop stops at the same epoch with the same
    weights; a run that has stopped has nothing left to train, unless --patience is
    raised, which goes on from the weights it kept, and says so."""
    c = ("--limit-train", 2000, "--augment", "none", "--lr", 3e-3, "--lr-final", 3e-3,
         "--patience", 2, "--hidden", 64)
    straight, pieces = tmp_path / "straight.npz", tmp_path / "pieces.npz"
    r = run(DEBUG, *c, "--epochs", 30, "--save", straight, "--quiet")
    assert r.returncode == 0, r.stderr
    said = re.search(r"stopped early after epoch (\d+) .* keeps epoch (\d+)'s weights", r.stdout)
    stop, kept = int(said.group(1)), int(said.group(2))
    assert kept < stop < 30
    assert run(DEBUG, *c, "--epochs", stop - 1, "--save", pieces, "--quiet").returncode == 0
    r = run(DEBUG, *c, "--epochs", 30, "--load", pieces, "--save", pieces, "--quiet")
    assert r.returncode == 0, r.stderr
    assert f"stopped early after epoch {stop} " in r.stdout, r.stdout
    assert_same_checkpoint(straight, pieces)
    from dpnet.storage.checkpoint import read_checkpoint_meta
    assert read_checkpoint_meta(straight)["training"]["history"]["stopped_early"] is True
    # stopped: nothing to train with the same --patience; a larger one goes on
    r = run(DEBUG, *c, "--epochs", 30, "--load", straight)
    assert r.returncode == 0, r.stderr
    assert (f"stopped early after epoch {stop} (no better val_loss in 2 epochs; --patience "
            f"2) and keeps epoch {kept}'s weights: nothing to train") in r.stdout, r.stdout
    r = run(DEBUG, *c[:-4], "--patience", 3, "--hidden", 64, "--epochs", stop + 1, "--load",
            straight, "--quiet")
    assert r.returncode == 0, r.stderr
    assert f"holds the weights --patience kept (epoch {kept}'s)" in r.stderr, r.stderr
    # a run with more patience, resumed with less than it has waited: it stops at once,
    # keeping the best epoch's weights, as the run with that patience did
    waiting = tmp_path / "waiting.npz"
    r = run(DEBUG, *c[:-4], "--patience", 5, "--hidden", 64, "--epochs", stop, "--save",
            waiting, "--quiet")
    assert r.returncode == 0 and "stopped early" not in r.stdout, r.stdout
    r = run(DEBUG, *c, "--epochs", 30, "--load", waiting, "--save", waiting)
    assert r.returncode == 0, r.stderr
    assert (f"stopped early: with --patience 2, no better val_loss in the checkpoint's "
            f"last 2 epochs; the model keeps epoch {kept}'s weights") in r.stdout, r.stdout
    assert_same_checkpoint(straight, waiting)


def test_a_checkpoint_without_a_training_record_starts_afresh_from_its_weights(tmp_path):
    """model.save() keeps no step count, seed or batch size: --load takes its weights
    with a fresh optimizer (its step count alone would put the learning rate's
    schedule ahead of the run), and says so."""
    import dpnet
    from dpnet.data import load_mnist
    d = load_mnist(limit_train=500, validation=100)
    m = dpnet.Sequential([dpnet.Dense(784, 32, activation="relu"),
                          dpnet.Dense(32, 10, activation="softmax")], seed=0)
    m.fit(d.x_train, d.y_train, epochs=2, batch_size=128, verbose=0)
    assert m.optimizer.t == 8
    lib, out = tmp_path / "lib.npz", tmp_path / "out.npz"
    m.save(lib)
    r = run(DEBUG, "--limit-train", 500, "--validation", 100, "--hidden", 32, "--augment",
            "none", "--epochs", 1, "--load", lib, "--save", out, "--quiet")
    assert r.returncode == 0, r.stderr
    assert "has no training record" in r.stderr and "fresh optimizer" in r.stderr, r.stderr
    assert dpnet.load(out).optimizer.t == 4              # this run's one epoch of steps
    # and a checkpoint of another --optimizer is named by the flag, full-batch ones too
    for optimizer in ("lbfgs", "sgd"):
        r = run(DEBUG, "--limit-train", 500, "--validation", 100, "--hidden", 32, "--augment",
                "none", "--epochs", 2, "--load", out, "--optimizer", optimizer)
        assert r.returncode == 2, r.stderr
        assert (f"was trained with --optimizer adam, this run has {optimizer}; resuming "
                f"needs the same settings") in r.stderr, r.stderr
