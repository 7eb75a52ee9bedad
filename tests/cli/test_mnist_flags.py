"""Each runDnn / runDnnDebug flag that no other test exercised, seen to have its effect
(issue 14): what the checkpoint records, what the weights become, what the run
prints. Small runs in process (runDnnDebug.py), each against the same baseline."""
import json
import subprocess
import sys

import numpy as np
import pytest

import dpnet
from conftest import ROOT

DEBUG = str(ROOT / "scripts" / "runDnnDebug.py")
DNN = str(ROOT / "scripts" / "runDnn.py")
BASE = ["--limit-train", "600", "--validation", "200", "--epochs", "2", "--hidden", "16",
        "--quiet"]
pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("no_workers_left")]


def run(tmp_path, *flags, script=DEBUG, name=None, expect=0):
    path = tmp_path / f"{name or abs(hash(flags))}.npz"
    js = tmp_path / f"{name or abs(hash(flags))}.json"
    r = subprocess.run([sys.executable, script, *BASE, *flags, "--save", str(path),
                        "--json", str(js)], capture_output=True, text=True, timeout=110,
                       cwd=ROOT)
    assert r.returncode == expect, r.stderr
    if expect:
        return r
    return dpnet.load(str(path)), json.loads(js.read_text()), r


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    return run(tmp_path_factory.mktemp("base"), name="base")


@pytest.mark.parametrize("flags, check", [
    (["--init", "zeros"],
     lambda m: np.allclose(m.layers[1].W, m.layers[1].W[:, :1])),   # zeros: every unit alike
    (["--optimizer", "momentum", "--momentum", "0.5"],
     lambda m: m.optimizer.config()["momentum"] == 0.5),
    (["--l2", "0.01"], lambda m: m.config()["l2"] == 0.01),
    (["--clip", "0.05"], lambda m: m.config()["clip_norm"] == 0.05),
    (["--output-activation", "sigmoid", "--loss", "binary_crossentropy"],
     lambda m: m.config()["loss"] == "binary_crossentropy"),
    (["--dtype", "float64"], lambda m: m.params.dtype == np.float64),
    (["--seed", "7"], lambda m: True),
    (["--standardize"], lambda m: True),
])
def test_each_flag_changes_the_model_and_is_recorded(tmp_path, baseline, flags, check):
    m, summary, _ = run(tmp_path, *flags)
    base, _, _ = baseline
    assert check(m), m.config()
    assert m.params.shape == base.params.shape
    if "--dtype" in flags:                   # the same run in double precision: close, not equal
        assert not np.array_equal(m.params.astype(np.float32), base.params)
        np.testing.assert_allclose(m.params, base.params, rtol=1e-3, atol=1e-4)
    else:
        assert not np.allclose(m.params.astype(np.float64), base.params.astype(np.float64))


def test_momentum_only_matters_to_the_optimizers_that_use_it(tmp_path):
    a, _, _ = run(tmp_path, "--optimizer", "momentum", "--momentum", "0.5", name="m5")
    b, _, _ = run(tmp_path, "--optimizer", "momentum", "--momentum", "0.95", name="m95")
    assert not np.allclose(a.params, b.params)


def test_momentum_decay_is_the_momentum_under_the_002_blogs_name(tmp_path):
    a, _, _ = run(tmp_path, "--optimizer", "nesterov", "--momentum", "0.6", name="mom")
    b, _, _ = run(tmp_path, "--optimizer", "nesterov", "--momentum-decay", "0.6", name="dec")
    assert b.optimizer.config()["momentum"] == 0.6
    assert np.array_equal(a.params, b.params)
    r = run(tmp_path, "--optimizer", "nesterov", "--momentum", "0.6", "--momentum-decay",
            "0.7", name="both", expect=2)
    assert "--momentum 0.6 and --momentum-decay 0.7 name the same factor" in r.stderr


def test_a_seed_is_refused_on_resume_and_the_same_seed_continues(tmp_path):
    m, _, _ = run(tmp_path, "--seed", "3", name="s3")
    r = subprocess.run([sys.executable, DEBUG, *BASE, "--epochs", "3", "--seed", "4",
                        "--load", str(tmp_path / "s3.npz")], capture_output=True, text=True,
                       timeout=110, cwd=ROOT)
    assert r.returncode == 2 and "seed" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_no_validation_set(tmp_path):
    m, summary, r = run(tmp_path, "--validation", "0", name="noval")
    assert summary["train"]["n"] == 600
    assert "val_loss" not in json.dumps(summary)            # the baseline's JSON has it
    r = run(tmp_path, "--validation", "0", "--patience", "1", name="noval2", expect=2)
    assert "--patience needs a validation set" in r.stderr


def test_patience_stops_a_run_that_stopped_improving(tmp_path):
    # a learning rate far too high: the validation loss does not improve on its first
    # epoch's, and patience 1 ends the run after the second of 6
    _, summary, r = run(tmp_path, "--optimizer", "sgd", "--lr", "3", "--lr-final", "3",
                        "--epochs", "6", "--patience", "1", "--allow-divergence", name="pat")
    assert summary["stopped_early"] and summary["epochs"] < 6, summary
    # said, with the epoch whose weights the model keeps (EarlyStopping restores them)
    h = summary["history"]
    best = 1 + int(np.argmin(h["val_loss"]))
    assert (f"runDnnDebug.py: stopped early after epoch {summary['epochs']} (--patience 1): "
            f"no better val_loss in the last 1 epoch; the model keeps epoch {best}'s weights "
            f"(val_loss {h['val_loss'][best - 1]:.4f})") in r.stdout, r.stdout
    # with --json - standard output is the JSON's alone: the line goes to stderr
    r = subprocess.run([sys.executable, DEBUG, *BASE, "--optimizer", "sgd", "--lr", "3",
                        "--lr-final", "3", "--epochs", "6", "--patience", "1",
                        "--allow-divergence", "--json", "-"], capture_output=True, text=True,
                       timeout=110, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["stopped_early"] and "stopped early after epoch" in r.stderr


def test_workers_0_trains_in_process_and_blas_threads_are_taken(tmp_path):
    m0, s0, r0 = run(tmp_path, "--workers", "0", script=DNN, name="w0")
    assert s0["engine"]["workers"] == 0
    d, _, _ = run(tmp_path, name="dbg")
    assert np.array_equal(m0.params, d.params)           # runDnn --workers 0 == runDnnDebug
    m2, s2, _ = run(tmp_path, "--workers", "2", "--blas-threads", "2", script=DNN, name="w2")
    assert s2["engine"]["blas_threads"] == 2
    np.testing.assert_allclose(m2.params, d.params, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("script", [DEBUG, str(ROOT / "scripts" / "runLstm.py")])
def test_plot_without_matplotlib_is_one_line_before_training(tmp_path, script):
    # a matplotlib that cannot be imported, first on the path: as if it were not installed
    fake = tmp_path / "site" / "matplotlib"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named matplotlib')\n")
    env = dict(__import__("os").environ, PYTHONPATH=str(tmp_path / "site"))
    flags = BASE if script == DEBUG else ["--steps", "5", "--hidden", "8"]
    r = subprocess.run([sys.executable, script, *flags, "--plot", str(tmp_path / "c.png")],
                       capture_output=True, text=True, timeout=110, cwd=ROOT, env=env)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines()[-1].endswith(
        "--plot needs matplotlib: pip install 'dpnet[plot]'")
    assert "Traceback" not in r.stderr and "epoch" not in r.stdout and "step" not in r.stdout
