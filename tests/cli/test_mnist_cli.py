import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT

SCRIPT = str(ROOT / "scripts" / "runDnnDebug.py")


def run(*args, timeout=240):
    env = dict(os.environ, PYTHONWARNINGS="error::RuntimeWarning")
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)


@pytest.mark.timeout(300)
def test_smoke_run_writes_json_checkpoint_and_plot(tmp_path):
    out, ck, png = tmp_path / "run.json", tmp_path / "m.npz", tmp_path / "curves.png"
    r = run("--limit-train", "2000", "--epochs", "2", "--hidden", "64", "32", "--lr-final", "1e-3",
            "--activation", "relu", "lecun_tanh", "--json", str(out), "--save", str(ck),
            "--plot", str(png))
    assert r.returncode == 0, r.stderr
    s = json.loads(out.read_text())
    assert s["epochs"] == 2 and s["n_params"] == 784 * 64 + 64 + 64 * 32 + 32 + 32 * 10 + 10
    assert s["test"]["accuracy"] > 0.6 and s["train"]["n"] == 2000
    assert len(s["per_class_test_accuracy"]) == 10 and s["samples_per_second"] > 0
    assert s["args"]["hidden"] == [64, 32] and s["wall_seconds"] > 0
    for line in ("epoch   1/2", "test accuracy:", "per-digit accuracy:", "execution time:",
                 "nodes per layer: 784 -> 64 -> 32 -> 10", "weight shapes: W1 784x64",
                 "total weights: 52,650"):
        assert line in r.stdout, line
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"
    # resume: the checkpoint knows it did 2 epochs, so --epochs 3 runs only epoch 3
    r2 = run("--limit-train", "2000", "--epochs", "3", "--hidden", "64", "32", "--lr-final", "1e-3",
             "--activation", "relu", "lecun_tanh", "--load", str(ck), "--json", str(out))
    assert r2.returncode == 0, r2.stderr
    assert "epoch   3/3" in r2.stdout and "epoch   2/3" not in r2.stdout
    s2 = json.loads(out.read_text())
    assert s2["epochs"] == 3
    # the curves cover the whole training, not just the resumed part
    assert len(s2["history"]["loss"]) == 3 and s2["history"]["loss"][:2] == s["history"]["loss"]


# (for another user access() says no first: "directory '/sys' is not writable")
ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="root: access() says yes")


@pytest.mark.parametrize("args,msg", [
    (["--hidden", "-3"], "--hidden: expected a positive integer, got '-3'"),
    (["--activation", "swish"], "invalid choice: 'swish'"),
    (["--batch-size", "0"], "--batch-size: expected a positive integer"),
    (["--lr", "-1"], "--lr: expected a number in (0, inf), got '-1'"),
    (["--dropout", "1"], "--dropout: expected a number in [0, 1), got '1'"),
    (["--data", "/no/such/dir"], "MNIST directory /no/such/dir does not exist"),
    (["--activation", "relu", "tanh"], "takes one name for all hidden layers or one per "
                                       "hidden layer (3), got 2"),
    (["--save", ""], "--save: expected a path, got an empty string"),
    (["--load", "/tmp"], "checkpoint '/tmp' is a directory"),
    (["--hidden", "100000000"], "79,500,000,010 parameters need at least"),
    (["--plot", "curves.xyz"], "--plot 'curves.xyz': matplotlib cannot write .xyz files"),
    (["--save", "/tmp/dpnet-same.out", "--json", "/tmp/dpnet-same.out"],
     "--json and --save name the same file"),
    (["--load", "/no/such.npz"], "checkpoint '/no/such.npz' does not exist"),
    (["--save", "/no/such/dir/m.npz"], "--save '/no/such/dir/m.npz': directory"),
    # a directory no file can be made in, whatever access() says (root's rights): found
    # before training, named by its flag
    pytest.param(["--plot", "/sys/curves.png"], "--plot '/sys/curves.png': cannot write in "
                 "'/sys'", marks=ROOT_ONLY),
    pytest.param(["--json", "/sys/run.json"], "--json '/sys/run.json': cannot write in '/sys'",
                 marks=ROOT_ONLY),
    (["--plot", "-"], "--plot needs a file name (- is standard output, for --json)"),
    (["--loss", "binary_crossentropy"], "needs output activation 'sigmoid'"),
])
def test_bad_input_exits_2_with_one_line(args, msg):
    r = run(*args, "--limit-train", "100", "--epochs", "1", timeout=60)
    assert r.returncode == 2
    assert r.stdout == "" or "error" not in r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and msg in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_architecture_mismatch_on_load_is_one_line(tmp_path):
    ck = tmp_path / "m.npz"
    assert run("--limit-train", "200", "--epochs", "1", "--hidden", "16", "--save", str(ck),
               "--quiet").returncode == 0
    r = run("--limit-train", "200", "--epochs", "2", "--hidden", "17", "--load", str(ck))
    assert r.returncode == 2 and "does not match the model" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_help_shows_an_example():
    r = run("--help", timeout=60)
    assert r.returncode == 0 and "example:" in r.stdout and "--hidden" in r.stdout


def test_json_to_standard_output_and_a_plot_without_extension(tmp_path):
    png = tmp_path / "curves"
    r = run("--limit-train", "300", "--epochs", "1", "--hidden", "8", "--quiet",
            "--json", "/dev/stdout", "--plot", str(png))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["epochs"] == 1
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_full_batch_lbfgs_run(tmp_path):
    out = tmp_path / "lb.json"
    png = tmp_path / "lb.png"
    r = run("--optimizer", "lbfgs", "--epochs", "4", "--limit-train", "1000", "--hidden", "32",
            "--json", str(out), "--plot", str(png))
    assert r.returncode == 0, r.stderr
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert "iter    4/4" in r.stdout and "L-BFGS-B" in r.stdout
    s = json.loads(out.read_text())
    assert s["epochs"] == 4 and s["history"]["loss"][-1] < s["history"]["loss"][0]
    # resume: --epochs counts the checkpoint's iterations (default --batch-size and all)
    ck = tmp_path / "lb.npz"
    small = ["--optimizer", "lbfgs", "--limit-train", "500", "--hidden", "16"]
    assert run(*small, "--epochs", "2", "--save", str(ck), "--quiet").returncode == 0
    r = run(*small, "--epochs", "4", "--load", str(ck), "--save", str(ck), "--json", str(out))
    assert r.returncode == 0, r.stderr
    s = json.loads(out.read_text())
    assert "continuing from iteration 2" in r.stdout and s["epochs"] == 4
    assert len(s["history"]["loss"]) == 4 and s["history"]["loss"][3] < s["history"]["loss"][1]
    r = run(*small, "--epochs", "4", "--load", str(ck))
    assert r.returncode == 0 and "nothing to train" in r.stdout
    r = run("--optimizer", "cg", "--dropout", "0.5", "--limit-train", "100", timeout=60)
    assert r.returncode == 2 and "drop --dropout" in r.stderr


def test_resume_through_the_cli_is_exact_and_refuses_other_settings(tmp_path):
    import dpnet
    common = ["--limit-train", "600", "--hidden", "24", "--dropout", "0.2", "--batch-size", "50",
              "--lr-final", "1e-3",     # a constant rate: an anneal spans the run's --epochs
              "--quiet"]
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    assert run(*common, "--epochs", "2", "--save", str(a)).returncode == 0
    assert run(*common, "--epochs", "1", "--save", str(b)).returncode == 0
    r = run(*common, "--epochs", "2", "--load", str(b), "--save", str(b))
    assert r.returncode == 0, r.stderr
    assert np.array_equal(dpnet.load(a).params, dpnet.load(b).params)
    r = run(*[c if c != "50" else "60" for c in common], "--epochs", "3", "--load", str(b))
    assert r.returncode == 2 and "trained with --batch-size 50, this run has 60" in r.stderr
    r = run(*common, "--epochs", "3", "--load", str(b), "--optimizer", "sgd")
    assert r.returncode == 2 and "trained with --optimizer adam, this run has sgd" in r.stderr
    r = run(*common, "--epochs", "3", "--save", str(tmp_path))
    assert r.returncode == 2 and "is a directory" in r.stderr


def test_a_run_whose_loss_runs_away_stops_with_one_line_unless_allowed(tmp_path):
    small = ("--limit-train", "1000", "--epochs", "2", "--hidden", "16", "--optimizer", "sgd",
             "--lr", "1e6", "--lr-final", "1e6")
    js = tmp_path / "run.json"
    r = run(*small, "--json", str(js))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "diverged" in r.stderr and "over 100x the" in r.stderr
    summary = json.loads(js.read_text())     # a sweep finds one summary per run
    assert summary["diverged"] is True and summary["error"] in r.stderr
    assert summary["steps"] >= 1 and summary["args"]["lr"] == 1e6
    assert "test" not in summary              # the weights that diverged are not scored
    r = run(*small, "--allow-divergence", "--quiet")
    assert r.returncode == 0, r.stderr
    assert "test accuracy:" in r.stdout                 # --quiet keeps the result


def test_binary_cross_entropy_on_mnist_takes_the_labels_as_one_hot_targets():
    r = run("--output-activation", "sigmoid", "--loss", "binary_crossentropy",
            "--limit-train", "5000", "--epochs", "3", "--lr-final", "1e-3", "--hidden", "64")
    assert r.returncode == 0, r.stderr
    acc = float(r.stdout.split("test accuracy: ")[1].split("%")[0])
    assert acc > 75, r.stdout


def test_json_minus_is_standard_output_alone(tmp_path):
    r = run("--limit-train", "300", "--epochs", "1", "--hidden", "8", "--json", "-")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["epochs"] == 1           # nothing else on stdout
    assert "test accuracy:" in r.stderr


def test_two_runs_cannot_write_one_checkpoint(tmp_path):
    import subprocess
    import sys
    import time
    ck = tmp_path / "shared.npz"
    first = subprocess.Popen([sys.executable, SCRIPT, "--limit-train", "20000", "--epochs",
                              "50", "--save", str(ck)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "shared.npz.lock").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        r = run("--limit-train", "300", "--epochs", "1", "--save", str(ck))
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert f"is being written by another run (pid {first.pid})" in r.stderr
        # another name for the same file: a link to it, a path through a linked directory
        (tmp_path / "link.npz").symlink_to(ck)
        (tmp_path / "dir").symlink_to(tmp_path)
        for other in (tmp_path / "link.npz", tmp_path / "dir" / "shared.npz"):
            r = run("--limit-train", "300", "--epochs", "1", "--save", str(other))
            assert r.returncode == 2 and f"is being written by another run (pid " \
                f"{first.pid})" in r.stderr, r.stderr
    finally:
        first.kill()
        first.wait()
    # the holder is gone (even killed): the lock goes with it
    assert run("--limit-train", "300", "--epochs", "1", "--hidden", "8", "--save", str(ck),
               "--quiet").returncode == 0
    assert not (tmp_path / "shared.npz.lock").exists()


def test_load_refuses_other_training_images_however_stored(tmp_path):
    """A resume checks the training files' content (a CRC-32 of their bytes, recorded in
    the checkpoint): another MNIST of the same size is refused, naming it; the same
    images stored another way (not gzipped) and another test set are not other data."""
    import gzip
    import shutil
    from dpnet.data.mnist import FILES, default_mnist_dir
    ck, src = tmp_path / "m.npz", default_mnist_dir()
    small = ("--limit-train", "300", "--hidden", "8", "--quiet")
    assert run(*small, "--epochs", "1", "--save", str(ck)).returncode == 0

    def copy(name, change=None):
        d = tmp_path / name
        d.mkdir()
        for stem in FILES.values():
            raw = gzip.decompress((src / f"{stem}.gz").read_bytes())
            if change and stem in change:
                raw = change[stem](bytearray(raw))
            (d / stem).write_bytes(raw)                       # stored unzipped
        return d

    def relabel_last(b):                                      # a validation label
        b[-1] = (b[-1] + 1) % 10
        return bytes(b)
    same = copy("same", {FILES["test_labels"]: relabel_last})
    r = run(*small, "--epochs", "2", "--load", str(ck), "--data", str(same))
    assert r.returncode == 0, r.stderr
    other = copy("other", {FILES["train_labels"]: relabel_last})
    r = run(*small, "--epochs", "2", "--load", str(ck), "--data", str(other))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert f"--load {str(ck)!r} was not trained on this data (the MNIST files in {other}: " \
        f"CRC-32 " in r.stderr and "resuming needs the same data" in r.stderr, r.stderr
    shutil.rmtree(same), shutil.rmtree(other)


def test_load_refuses_other_data_and_notes_another_learning_rate(tmp_path):
    ck = tmp_path / "d.npz"
    small = ("--limit-train", "500", "--hidden", "16")
    assert run(*small, "--epochs", "1", "--save", str(ck), "--quiet").returncode == 0
    r = run(*small, "--epochs", "2", "--load", str(ck), "--standardize")
    assert r.returncode == 2 and "--standardize False, this run has True" in r.stderr
    r = run("--limit-train", "500", "--hidden", "16", "--validation", "5000", "--epochs", "2",
            "--load", str(ck))
    assert r.returncode == 2 and "--validation 10000, this run has 5000" in r.stderr
    r = run(*small, "--epochs", "2", "--load", str(ck), "--lr", "0.01", "--quiet")
    assert r.returncode == 0, r.stderr
    assert "note: --load" in r.stderr and "continuing with" in r.stderr
    # the L2 penalty and the gradient clip may change too, and are noted
    r = run(*small, "--epochs", "1", "--load", str(ck), "--l2", "0.01", "--clip", "2",
            "--quiet")
    assert r.returncode == 0, r.stderr
    assert f"note: --load {str(ck)!r} was trained with --l2 0; continuing with 0.01" \
        in r.stderr and "was trained with --clip none; continuing with 2" in r.stderr


def test_resumed_runs_count_on_and_say_when_there_is_nothing_to_do(tmp_path):
    ck = tmp_path / "r.npz"
    small = ("--limit-train", "500", "--hidden", "8")
    assert run(*small, "--epochs", "1", "--save", str(ck), "--quiet").returncode == 0
    r = run(*small, "--epochs", "1", "--load", str(ck))
    assert r.returncode == 0 and "nothing to train (raise --epochs)" in r.stdout
    assert "(nothing trained)" in r.stdout
    lb = tmp_path / "lb.npz"
    assert run(*small, "--optimizer", "lbfgs", "--epochs", "2", "--save", str(lb),
               "--quiet").returncode == 0
    r = run(*small, "--optimizer", "lbfgs", "--epochs", "4", "--load", str(lb))
    assert r.returncode == 0 and "iter    3/4" in r.stdout and "iter    4/4" in r.stdout


def test_a_limit_beyond_the_data_is_noted():
    r = run("--limit-train", "100000", "--validation", "59000", "--epochs", "1", "--hidden",
            "8", "--quiet")
    assert r.returncode == 0, r.stderr
    assert "--limit-train 100000 is more than the 1,000 training images" in r.stderr


def with_meta(src, dst, edit):
    """A copy of checkpoint ``src`` whose JSON metadata ``edit(meta)`` changed, as a
    hand edit or another program would (the arrays and their checksums kept)."""
    with np.load(src, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(arrays["__meta__"].tobytes())
    edit(meta)
    arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(dst, **arrays)
    return dst


@pytest.mark.timeout(300)
def test_a_checkpoint_with_malformed_metadata_is_one_line_naming_the_field(tmp_path):
    ck = tmp_path / "m.npz"
    small = ("--limit-train", "300", "--hidden", "8", "--augment", "none", "--quiet")
    assert run(*small, "--epochs", "1", "--save", str(ck)).returncode == 0

    def put(section, key, value):
        def edit(meta):
            if key is None:
                meta[section] = value
            else:
                meta[section][key] = value
        return edit

    def schedule(value):
        return lambda meta: meta["optimizer"]["config"].__setitem__("schedule", value)
    cases = [
        (put("training", None, [1]), "has a malformed training record: [1]"),
        (put("training", "step", "abc"), "has a bad training step: 'abc'"),
        (put("training", "step", -5), "has a bad training step: -5"),
        (put("training", "step", 2.5), "has a bad training step: 2.5"),
        (put("training", "batch_size", "128"), "has a bad training batch_size: '128'"),
        (put("training", "data", [3]), "has a bad training data: [3]"),
        (put("training", "history", {"epochs": "x"}), "has a malformed training history"),
        (put("optimizer", None, [2]), "has no optimizer state"),
        (put("model", None, 7), "has no model description"),
        (schedule({"type": "anneal"}),
         "bad optimizer state: the 'anneal' schedule takes lr, lr_final, total_steps, kind; "
         "got nothing"),
        (schedule(5), "bad optimizer state: a learning-rate schedule is a JSON object, got 5"),
    ]
    for i, (edit, said) in enumerate(cases):
        bad = with_meta(ck, tmp_path / f"b{i}.npz", edit)
        r = run(*small, "--epochs", "2", "--load", str(bad))
        assert r.returncode == 2 and said in r.stderr, (said, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    # a file that is no checkpoint at all is named as such, deformation flags or not
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    r = run(*small, "--epochs", "2", "--load", str(junk), "--shift", "3")
    assert r.returncode == 2 and "is truncated or corrupt" in r.stderr, r.stderr
    # the untouched checkpoint still resumes, its schedule named in words when it changes
    r = run(*small, "--epochs", "2", "--load", str(ck), "--lr", "0.01", "--lr-final", "0.01")
    assert r.returncode == 0, r.stderr
    assert ("was trained with learning rate 0.001 annealed to 1e-05 over 3 steps; "
            "continuing with 0.01") in r.stderr, r.stderr


def test_python_m_dpnet_mistakes_are_one_line():
    for args, said in (([], "the following arguments are required: command"),
                       (["bogus"], "argument command: invalid choice: 'bogus'"),
                       (["clean", "--bogus"], "unrecognized arguments: --bogus"),
                       (["keys"], "the following arguments are required: DIR")):
        r = subprocess.run([sys.executable, "-m", "dpnet", *args], capture_output=True,
                           text=True, timeout=60, cwd=ROOT)
        assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stderr
        assert r.stderr.startswith("python -m dpnet") and said in r.stderr, r.stderr


def test_a_save_path_where_no_file_can_be_made_and_a_checkpoint_lbfgs_cannot_go_on(tmp_path):
    r = run("--limit-train", "200", "--epochs", "1", "--hidden", "8", "--save",
            "/proc/x.npz")
    said = r.stderr.strip()                 # (root: found by making a file there)
    assert r.returncode == 2 and said in (
        "runDnnDebug.py: error: --save '/proc/x.npz': cannot write in '/proc' "
        "(No such file or directory)",
        "runDnnDebug.py: error: --save '/proc/x.npz': directory '/proc' is not writable"), said
    ck = tmp_path / "d.npz"             # deformed images: the default
    assert run("--limit-train", "200", "--epochs", "1", "--hidden", "8", "--save", str(ck),
               "--quiet").returncode == 0
    r = run("--limit-train", "200", "--epochs", "2", "--hidden", "8", "--load", str(ck),
            "--optimizer", "lbfgs")
    assert r.returncode == 2 and f"--load {str(ck)!r} was trained with --augment affine: " \
        "--optimizer lbfgs is full-batch" in r.stderr, r.stderr
    assert "drop --augment" not in r.stderr          # it was never given
