"""Each runLstm flag no other test exercised, seen to take effect (issue 14): what the
checkpoint and the JSON record, what the weights become. Small runs in this process."""
import json

import numpy as np
import pytest

from dpnet.training.text_checkpoint import load_text_checkpoint
from test_lstm_cli import SMALL, cli, text  # noqa: F401  (text: a fixture)

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("no_workers_left")]
STEPS = ["--steps", "40"]


def train(tmp_path, text, capsys, name, *flags, expect=0):
    ck, js = tmp_path / f"{name}.npz", tmp_path / f"{name}.json"
    length = [] if "--epochs" in flags or "--steps" in flags else STEPS
    rc, out, err = cli(["--text", text, *SMALL, *length, *flags, "--save", ck, "--json", js],
                       capsys)
    assert rc == expect, err
    if expect:
        return err
    return load_text_checkpoint(ck), json.loads(js.read_text()), out + err


@pytest.fixture
def baseline(tmp_path, text, capsys):
    return train(tmp_path, text, capsys, "base")


@pytest.mark.parametrize("flags, check", [
    (["--clip", "0.01"], lambda c, s: c.model.clip_norm == 0.01),
    (["--clip-value", "0.0005"], lambda c, s: c.model.clip_value == 0.0005),
    (["--forget-bias", "2.0"], lambda c, s: True),
    (["--optimizer", "adagrad"], lambda c, s: s["optimizer"]["name"] == "adagrad"),
    (["--train-temperature", "2"], lambda c, s: c.model.temperature == 2.0),
])
def test_each_flag_changes_the_model_and_is_recorded(tmp_path, text, capsys, baseline,
                                                     flags, check):
    c, s, _ = train(tmp_path, text, capsys, "flag", *flags)
    base, _, _ = baseline
    assert check(c, s)
    assert not np.allclose(c.model.params, base.model.params)
    assert s["train_losses"][-1] < s["train_losses"][0]       # and it trains


def test_train_temperature_continues_from_the_checkpoint_unless_given(tmp_path, text,
                                                                     capsys):
    train(tmp_path, text, capsys, "t", "--train-temperature", "0.5")
    ck = tmp_path / "t.npz"
    rc, _, err = cli(["--text", text, *SMALL, "--steps", "50", "--load", ck, "--save", ck],
                     capsys)
    assert rc == 0, err
    assert load_text_checkpoint(ck).model.temperature == 0.5
    rc, _, err = cli(["--text", text, *SMALL, "--steps", "60", "--load", ck, "--save", ck,
                      "--train-temperature", "1.5"], capsys)
    assert rc == 0, err
    assert load_text_checkpoint(ck).model.temperature == 1.5


def test_forget_bias_sets_the_forget_gates_bias(tmp_path, text, capsys):
    c, _, _ = train(tmp_path, text, capsys, "fb", "--forget-bias", "2.0", "--steps", "0")
    H = c.model.hidden_size
    b = c.model.layers[0]["b"] if hasattr(c.model, "layers") else c.model.b
    assert np.all(b[H:2 * H] == 2.0) and np.all(b[:H] == 0)    # gates i, f, g, o


def test_no_validation_text(tmp_path, text, capsys, baseline):
    _, base, _ = baseline
    _, s, out = train(tmp_path, text, capsys, "noval", "--val-fraction", "0")
    assert base["val"] is not None and s["val"] is None
    assert "val loss" not in out


def test_epochs_counts_whole_passes(tmp_path, text, capsys):
    c, s, _ = train(tmp_path, text, capsys, "ep", "--epochs", "2")
    assert s["steps"] == 2 * c.chunks_per_epoch


def test_lr_and_clip_given_with_load_take_effect(tmp_path, text, capsys):
    c, _, _ = train(tmp_path, text, capsys, "first")
    rc, out, err = cli(["--text", text, *SMALL, "--steps", "60", "--load",
                        tmp_path / "first.npz", "--lr", "0.05", "--clip", "0.5", "--save",
                        tmp_path / "more.npz"], capsys)
    assert rc == 0, err
    more = load_text_checkpoint(tmp_path / "more.npz")
    assert more.model.clip_norm == 0.5
    assert more.model.optimizer.config()["schedule"] == {"type": "constant", "lr": 0.05}
    assert "0.05" in out + err                                  # the change is noted


def test_flags_that_would_change_nothing_are_refused(tmp_path, text, capsys):
    """--device/--update without --gpu, --forget-bias (an initial value) with --load:
    one line each, not silently ignored."""
    for flags, said in ((["--device", "1"], "--device is for --gpu: add it, or drop it"),
                        (["--update", "coordinator", "--device", "2"],
                         "--device and --update are for --gpu: add it, or drop them")):
        assert said in train(tmp_path, text, capsys, "x", *flags, expect=2)
    train(tmp_path, text, capsys, "first")
    err = train(tmp_path, text, capsys, "more", "--steps", "60", "--load",
                tmp_path / "first.npz", "--forget-bias", "2", expect=2)
    assert "--forget-bias sets the forget gates' initial bias; --load goes on from the " \
        "checkpoint's weights: drop it" in err


def test_on_failure_abort_with_a_worker_that_dies(tmp_path, text, capsys, monkeypatch):
    monkeypatch.setenv("DPNET_FAULTS", "die_on=step,after=10")
    err = train(tmp_path, text, capsys, "abort", "--workers", "2", "--on-failure", "abort",
                expect=1)
    assert "worker 0 (pid" in err or "worker 1 (pid" in err
    assert "exited with code 3" in err and "saved the weights of step 10" in err


def test_a_continuation_that_changes_the_rate_or_the_temperature_says_so(
        tmp_path, text, capsys, baseline):
    ck = tmp_path / "base.npz"
    rc, _, err = cli(["--text", text, *SMALL, "--steps", "50", "--load", ck, "--lr", "0.05",
                      "--train-temperature", "2"], capsys)
    assert rc == 0, err
    assert (f"runLstm.py: note: --load '{ck}' was trained with --train-temperature 1; "
            f"continuing at 2") in err, err
    assert "was trained with learning rate 0.01; continuing with 0.05" in err, err
    rc, _, err = cli(["--text", text, *SMALL, "--steps", "50", "--load", ck], capsys)
    assert rc == 0 and "note:" not in err, err             # nothing changed: nothing said
