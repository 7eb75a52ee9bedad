"""What the 000 and 001 seeds' users read at the end of a run and in every epoch line
(issue 13): correct/total on the test set, the training curve's summary, the learning
rate and batch size, total nodes beside total weights; --report-test's test accuracy
per epoch and the best epoch by validation loss -- each checked against the run's own
JSON summary."""
import json
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT

DEBUG = str(ROOT / "scripts" / "runDnnDebug.py")
DNN = str(ROOT / "scripts" / "runDnn.py")
BASE = ["--limit-train", "1500", "--validation", "500", "--epochs", "4", "--hidden", "32",
        "16", "--augment", "none"]
pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("no_workers_left")]


def run(tmp_path, *flags, script=DEBUG):
    js = tmp_path / "s.json"
    r = subprocess.run([sys.executable, script, *BASE, *flags, "--json", str(js)],
                       capture_output=True, text=True, timeout=110, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    return r.stdout, strict_load(js.read_text())


def strict_load(text):
    """JSON as every reader takes it: a bare NaN or Infinity (Python's extension) fails."""
    def refuse(name):
        raise AssertionError(f"{name} is not JSON")
    return json.loads(text, parse_constant=refuse)


def test_the_final_report_sums_up_the_run(tmp_path):
    out, s = run(tmp_path, "--lr", "0.002", "--lr-final", "0.0005", "--batch-size", "64")
    test, h = s["test"], s["history"]
    right = int(re.search(r"test accuracy: [\d.]+%  \((\d+)/(\d+) right", out).group(1))
    assert right == round(test["accuracy"] * test["n"]) and f"/{test['n']} right" in out
    i, j = int(np.argmin(h["loss"])), int(np.argmax(h["accuracy"]))
    assert (f"training loss: min {h['loss'][i]:.4f} (epoch {i + 1}), final "
            f"{h['loss'][-1]:.4f}; accuracy: max {h['accuracy'][j]:.4f} (epoch {j + 1}), "
            f"final {h['accuracy'][-1]:.4f}") in out
    assert "optimizer: adam, learning rate 0.002 annealed to 0.0005, batch size 64" in out
    assert f"total weights: {s['n_params']:,}  (total nodes: {784 + 32 + 16 + 10:,})" in out
    assert "test_acc" not in out and "best epoch" not in out        # off by default
    assert "test_accuracy" not in h


@pytest.mark.parametrize("script, extra", [(DEBUG, []), (DNN, ["--workers", "2"])])
def test_report_test_shows_the_test_accuracy_each_epoch_and_the_best_epoch(tmp_path,
                                                                           script, extra):
    out, s = run(tmp_path, "--report-test", *extra, script=script)
    h = s["history"]
    lines = [l for l in out.splitlines() if l.startswith("epoch ")]
    assert len(lines) == 4 and len(h["test_accuracy"]) == 4
    for line, acc in zip(lines, h["test_accuracy"]):
        assert f"test_acc {acc:.4f}" in line
    # the last epoch's figure is the final test accuracy (the same weights)
    assert h["test_accuracy"][-1] == s["test"]["accuracy"]
    k = int(np.argmin(h["val_loss"]))
    assert (f"best epoch by validation loss: {k + 1} (val_loss {h['val_loss'][k]:.4f}, "
            f"val_acc {h['val_accuracy'][k]:.4f}, test_acc {h['test_accuracy'][k]:.4f})") in out
    # watching the test set changes nothing in the training
    _, plain = run(tmp_path, *extra, script=script)
    assert plain["history"]["val_loss"] == h["val_loss"]


def test_report_test_can_start_or_stop_across_a_resume(tmp_path):
    """Epochs that did not watch the test set have null there (strict JSON: not NaN);
    the report names the best epoch among those that did, and the checkpoint loads
    again."""
    ck = tmp_path / "r.npz"
    common = ["--epochs", "2", "--save", str(ck)]
    out, s = run(tmp_path, *common)
    out, s = run(tmp_path, "--epochs", "4", "--load", str(ck), "--save", str(ck),
                 "--report-test")
    h = s["history"]
    assert len(h["test_accuracy"]) == 4 and h["test_accuracy"][:2] == [None, None]
    assert all(isinstance(a, float) for a in h["test_accuracy"][2:])
    k = 2 + int(np.argmin(h["val_loss"][2:]))
    assert f"best epoch by validation loss: {k + 1} " in out
    out, s = run(tmp_path, "--epochs", "5", "--load", str(ck), "--save", str(ck))
    assert len(s["history"]["test_accuracy"]) == 5
    assert s["history"]["test_accuracy"][4] is None


def test_report_test_and_patience_are_refused_with_scipy(tmp_path):
    for flag in (["--report-test"], ["--patience", "2"]):
        r = subprocess.run([sys.executable, DEBUG, *BASE, "--optimizer", "lbfgs", *flag],
                           capture_output=True, text=True, timeout=110, cwd=ROOT)
        assert r.returncode == 2, r.stderr
        assert f"{flag[0]} is for the minibatch optimizers, not --optimizer lbfgs" in r.stderr


def test_the_summary_is_strict_json_whatever_it_holds(tmp_path):
    from dpnet.cli.common import write_json
    path = tmp_path / "s.json"
    write_json(str(path), {"a": [1.5, float("nan"), np.float32(np.inf)], "b": np.int64(3),
                           "c": {"d": -np.inf, "e": (np.bool_(True), "x")}})
    assert strict_load(path.read_text()) == {"a": [1.5, None, None], "b": 3,
                                             "c": {"d": None, "e": [True, "x"]}}
