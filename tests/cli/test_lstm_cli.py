"""scripts/runLstm.py: training, continuing, generating, the JSON summary, one-line
errors for bad input, and Ctrl-C / SIGTERM. Most runs call the CLI in process (fast);
a few go through the script itself, as a user would."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT, run_leftovers
from dpnet.training.text_checkpoint import load_text_checkpoint
from dpnet.cli.lstm import run_lstm

SCRIPT = str(ROOT / "scripts" / "runLstm.py")
SHAKESPEARE = ROOT / "data" / "tinyshakespeare" / "input.txt"
TEXT = "hello world, this is a tiny text for a tiny model. " * 30
SMALL = ["--hidden", "24", "--seq-len", "16", "--batch-size", "4", "--lr", "0.01",
         "--print-every", "20", "--eval-every", "40", "--sample-every", "40",
         "--sample-length", "30"]


@pytest.fixture
def text(tmp_path):
    p = tmp_path / "small.txt"
    p.write_text(TEXT, encoding="utf-8")
    return p


def cli(argv, capsys):
    """(exit code, stdout, stderr) of run_lstm in this process."""
    try:
        rc = run_lstm([str(a) for a in argv], prog="runLstm.py")
    except SystemExit as e:                            # argparse's own exits
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def script(*argv, timeout=60):
    return subprocess.run([sys.executable, SCRIPT, *map(str, argv)], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


def unigram_entropy(s):
    _, counts = np.unique(list(s), return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())


def test_train_save_json_then_continue_exactly(tmp_path, text, capsys):
    ck, js, png = tmp_path / "ck.npz", tmp_path / "run.json", tmp_path / "loss.png"
    rc, out, err = cli(["--text", text, *SMALL, "--steps", "120", "--save", ck,
                        "--json", js, "--plot", png], capsys)
    assert rc == 0, err
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"
    assert "smooth" in out and "chars/s" in out and "bits/char" in out
    assert "---- sample at step 40" in out
    s = json.loads(js.read_text())
    assert s["steps"] == 120 and s["n_params"] > 0 and s["args"]["hidden"] == 24
    assert s["train"]["nats_per_char"] < 0.6 * unigram_entropy(TEXT)
    assert s["val"]["bits_per_char"] == pytest.approx(s["val"]["nats_per_char"] / np.log(2))
    assert s["chars_per_second"] > 0 and s["wall_seconds"] > 0
    # continue 120 -> 200 (mid-epoch) == 200 straight
    rc, _, err = cli(["--text", text, "--load", ck, "--steps", "200", "--save", ck,
                      "--quiet"], capsys)
    assert rc == 0 and err == ""                       # same text and layout: no note
    rc, _, _ = cli(["--text", text, *SMALL, "--steps", "200", "--save", tmp_path / "s.npz",
                    "--quiet"], capsys)
    a, b = load_text_checkpoint(ck), load_text_checkpoint(tmp_path / "s.npz")
    assert a.step == b.step == 200 and np.array_equal(a.model.params, b.model.params)
    # flags that contradict the checkpoint
    rc, _, err = cli(["--text", text, "--load", ck, "--hidden", "32"], capsys)
    assert rc == 2 and "--hidden 32" in err
    rc, _, err = cli(["--text", text, "--load", ck, "--optimizer", "adagrad"], capsys)
    assert rc == 2 and "adagrad" in err


def test_stacked_layers_continue_on_the_checkpoints_own_text(tmp_path, text, capsys,
                                                             monkeypatch):
    ck, js = tmp_path / "ck2.npz", tmp_path / "run2.json"
    monkeypatch.chdir(tmp_path)                        # --text given relative to here
    rc, out, err = cli(["--text", text.name, *SMALL, "--layers", "2", "--val-fraction",
                        "0.2", "--steps", "50", "--save", ck, "--json", js, "--quiet"],
                       capsys)
    assert rc == 0, err
    s = json.loads(js.read_text())
    assert s["layers"] == 2 and s["hidden"] == 24
    assert load_text_checkpoint(ck).model.num_layers == 2
    # from elsewhere, with neither --text nor --val-fraction: the checkpoint's text and
    # split, not tiny Shakespeare and 0.1 (either would change the streams: a note)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    rc, _, err = cli(["--load", ck, "--steps", "90", "--save", ck, "--quiet"], capsys)
    assert rc == 0 and err == ""
    straight = tmp_path / "straight.npz"
    cli(["--text", text, *SMALL, "--layers", "2", "--val-fraction", "0.2", "--steps", "90",
         "--save", straight, "--quiet"], capsys)
    a, b = load_text_checkpoint(ck), load_text_checkpoint(straight)
    assert a.step == b.step == 90 and np.array_equal(a.model.params, b.model.params)
    assert a.text == str(text) and a.val_fraction == 0.2
    for argv in (["--load", ck, "--layers", "3"],
                 ["--load", ck, "--layers", "3", "--sample", "10"],
                 ["--load", ck, "--hidden", "8", "--sample", "10"]):
        rc, out, err = cli(argv, capsys)
        assert rc == 2 and out == "" and "the checkpoint's model has" in err, argv
    os.remove(text)                                    # the recorded text is gone
    rc, _, err = cli(["--load", ck, "--steps", "100"], capsys)
    assert rc == 2 and "no longer exists" in err and len(err.splitlines()) == 1


def test_an_output_onto_an_input_is_refused_and_nothing_is_written(tmp_path, text, capsys):
    before = text.read_bytes()
    rc, _, err = cli(["--text", text, *SMALL, "--steps", "5", "--save", text], capsys)
    assert rc == 2 and "--text and --save name the same file" in err
    ck = tmp_path / "ck.npz"
    assert cli(["--text", text, *SMALL, "--steps", "5", "--save", ck, "--quiet"],
               capsys)[0] == 0
    kept = ck.read_bytes()
    rc, _, err = cli(["--text", text, "--load", ck, "--steps", "10", "--json", ck], capsys)
    assert rc == 2 and "--load and --json name the same file" in err
    assert text.read_bytes() == before and ck.read_bytes() == kept
    # --save onto --load is how a run continues in place: allowed
    assert cli(["--text", text, "--load", ck, "--steps", "10", "--save", ck, "--quiet"],
               capsys)[0] == 0


def test_generation_mode(tmp_path, text, capsys):
    ck = tmp_path / "g.npz"
    assert cli(["--text", text, *SMALL, "--steps", "60", "--save", ck, "--quiet"],
               capsys)[0] == 0
    runs = [cli(["--load", ck, "--sample", "80", "--prime", "hello", "--temperature",
                 "0.5", "--seed", s], capsys) for s in (1, 1, 2)]
    assert all(rc == 0 for rc, _, _ in runs)
    assert runs[0][1] == runs[1][1] != runs[2][1]
    assert runs[0][1].startswith("hello") and len(runs[0][1]) == len("hello") + 80 + 1
    rc, out, err = cli(["--load", ck, "--sample", "20", "--prime", "ROMEO:"], capsys)
    assert rc == 2 and out == "" and "'R'" in err and len(err.splitlines()) == 1
    rc, _, err = cli(["--sample", "20"], capsys)
    assert rc == 2 and "--load" in err


def test_text_outside_the_checkpoint_vocabulary(tmp_path, text, capsys):
    ck = tmp_path / "v.npz"
    cli(["--text", text, *SMALL, "--steps", "5", "--save", ck, "--quiet"], capsys)
    other = tmp_path / "other.txt"
    other.write_text(TEXT + "Zebra!", encoding="utf-8")
    rc, _, err = cli(["--text", other, "--load", ck], capsys)
    assert rc == 2 and "'Z'" in err and len(err.splitlines()) == 1


BAD = [
    ("missing", None, [], "does not exist"),
    ("empty", b"", [], "is empty"),
    ("latin1", "café au lait ".encode("latin-1") * 50, [], "not valid UTF-8"),
    ("short", b"abcdefgh" * 10, ["--batch-size", "8", "--seq-len", "16"], "too short"),
    ("shortval", b"abcdefgh" * 40, ["--batch-size", "2", "--seq-len", "32"], "validation"),
    ("ok", b"abcdefgh" * 400, ["--temperature", "0"], "--temperature"),
    ("ok", b"abcdefgh" * 400, ["--temperature", "-0.5"], "--temperature"),
    ("ok", b"abcdefgh" * 400, ["--hidden", "0"], "--hidden"),
    ("ok", b"abcdefgh" * 400, ["--lr", "fast"], "--lr"),
    ("ok", b"abcdefgh" * 400, ["--steps", "-3"], "--steps"),
    ("ok", b"abcdefgh" * 400, ["--steps", "3", "--epochs", "1"], "--epochs"),
    ("ok", b"abcdefgh" * 400, ["--val-fraction", "1.5"], "--val-fraction"),
    ("ok", b"abcdefgh" * 400, ["--prime", "xyz"], "--prime"),
    ("ok", b"abcdefgh" * 400, ["--save", "/no/such/dir/ck.npz"], "does not exist"),
    ("ok", b"abcdefgh" * 400, ["--load", "/no/such/ck.npz"], "does not exist"),
    ("ok", b"abcdefgh" * 400, ["--load", ""], "expected a path"),
    ("ok", b"abcdefgh" * 400, ["--layers", "100000000"], "parameters need at least"),
    # a float that is 0 as written 1e-400: here 0 means "off", not a tiny clip
    ("ok", b"abcdefgh" * 400, ["--clip", "1e-400"], "'1e-400' is too small to be told "
     "from 0"),
]


@pytest.mark.parametrize("name, data, extra, words", BAD,
                         ids=[f"{b[0]}-{'-'.join(b[2]) or 'file'}" for b in BAD])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, name, data, extra, words):
    p = tmp_path / f"{name}.txt"
    if data is not None:
        p.write_bytes(data)
    rc, _, err = cli(["--text", p, "--steps", "2", "--quiet", *extra], capsys)
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and words in err, err
    assert "Traceback" not in err


def test_script_reports_bad_input_without_traceback(tmp_path):
    p = tmp_path / "bad.txt"
    p.write_bytes(b"\xff\xfe\x00garbage")
    r = script("--text", p)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "not valid UTF-8" in r.stderr


@pytest.mark.timeout(60)
def test_script_on_tiny_shakespeare_with_json(tmp_path):
    js = tmp_path / "s.json"
    r = script("--hidden", "16", "--seq-len", "32", "--batch-size", "8", "--steps", "4",
               "--print-every", "2", "--sample-every", "4", "--sample-length", "40",
               "--blas-threads", "1", "--json", js)
    assert r.returncode == 0, r.stderr
    assert "65 characters" in r.stdout and "step 4/4" in r.stdout
    s = json.loads(js.read_text())
    assert s["vocab_size"] == 65 and s["steps"] == 4 and s["val"]["nats_per_char"] > 0
    assert s["args"]["text"] == str(SHAKESPEARE)
    # the bundled text is not recorded in a checkpoint (the repository may move):
    # continuing without --text finds it wherever this checkout is
    from dpnet.cli.lstm import _recorded_text
    assert _recorded_text(str(SHAKESPEARE)) is None
    assert _recorded_text(str(js)) == str(js)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("sig, workers", [(signal.SIGINT, 2), (signal.SIGTERM, 0)])
def test_signal_mid_run_saves_and_exits_128_plus_the_signal(tmp_path, text, sig, workers):
    ck = tmp_path / "int.npz"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    p = subprocess.Popen([sys.executable, SCRIPT, "--text", str(text), *SMALL,
                          "--print-every", "1", "--steps", "1000000", "--workers",
                          str(workers), "--save", str(ck), "--save-every", "1000000"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         cwd=ROOT, env=env)
    for line in p.stdout:                              # wait until training is under way
        if line.startswith("step") and "smooth" in line:
            break
    p.send_signal(sig)
    t0 = time.monotonic()
    out, err = p.communicate(timeout=30)
    assert time.monotonic() - t0 < 10, "did not exit promptly"
    assert p.returncode == 128 + sig, err
    assert f"stopped by {signal.Signals(sig).name}" in out
    c = load_text_checkpoint(ck)
    # mid-epoch the checkpoint carries the stream state; at an epoch boundary none
    assert c.step > 0 and (c.state is not None) == (c.step % c.chunks_per_epoch != 0)
    assert run_leftovers(p.pid) == []


@pytest.mark.parametrize("flag", ["--save", "--json", "--plot"])
def test_output_path_that_is_a_directory_is_refused_before_training(tmp_path, text, flag):
    r = subprocess.run([sys.executable, SCRIPT, "--text", str(text), *SMALL, "--steps", "5",
                        flag, str(tmp_path)], capture_output=True, text=True, timeout=60,
                       cwd=ROOT)
    assert r.returncode == 2 and "is a directory" in r.stderr
    assert "step" not in r.stdout                      # nothing was trained first
    assert len(r.stderr.strip().splitlines()) == 1


def test_load_of_a_file_that_is_not_a_checkpoint(tmp_path, text):
    junk = tmp_path / "junk.npz"
    junk.write_text("hello")
    r = subprocess.run([sys.executable, SCRIPT, "--load", str(junk), "--sample", "10"],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 2 and "truncated or corrupt" in r.stderr
    assert "pickle" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_a_runaway_loss_stops_the_lstm_with_one_line(tmp_path, text):
    js = tmp_path / "run.json"
    r = subprocess.run([sys.executable, SCRIPT, "--text", str(text), *SMALL, "--steps", "50",
                        "--lr", "1e9", "--clip", "0", "--json", str(js)], capture_output=True,
                       text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "diverged" in r.stderr
    summary = json.loads(js.read_text())     # a sweep finds one summary per run
    assert summary["diverged"] is True and summary["error"] in r.stderr
    assert 1 <= summary["steps"] <= 50 and len(summary["train_losses"]) >= 1


def test_a_stale_validation_loss_says_when_it_was_measured(tmp_path, text):
    js = tmp_path / "s.json"
    r = subprocess.run([sys.executable, SCRIPT, "--text", str(text), *SMALL, "--steps", "12",
                        "--eval-every", "5", "--print-every", "4", "--sample-every", "0",
                        "--json", str(js)], capture_output=True, text=True, timeout=60,
                       cwd=ROOT)
    assert r.returncode == 0, r.stderr
    s = json.loads(js.read_text())
    assert s["val"]["step"] == 12 and len(s["train_losses"]) == 12   # the end validates
    ck = tmp_path / "c.npz"
    subprocess.run([sys.executable, SCRIPT, "--text", str(text), *SMALL, "--steps", "10",
                    "--eval-every", "5", "--save", str(ck), "--quiet"], check=True,
                   capture_output=True, timeout=60, cwd=ROOT)
    p = subprocess.Popen([sys.executable, SCRIPT, "--text", str(text), "--load", str(ck),
                          "--steps", "1000000", "--eval-every", "0", "--print-every", "1",
                          "--sample-every", "0", "--json", str(js)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, cwd=ROOT,
                         env=dict(os.environ, PYTHONUNBUFFERED="1"))
    for line in p.stdout:
        if line.startswith("step") and "smooth" in line:
            break
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 130, err
    assert "measured at step 10" in out
    assert json.loads(js.read_text())["val"]["step"] == 10
