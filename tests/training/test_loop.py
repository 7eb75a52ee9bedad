"""The loop core that fit and fit_text share: one callback rule, a checkpoint when a
worker fails, the same stop on Ctrl-C."""
import os
import signal

import numpy as np
import pytest

import dpnet
from dpnet import Dense, Sequential
from dpnet.data.text import StreamBatcher, Vocabulary
from dpnet.engines.coordinator import MultiprocessEngine
from dpnet.engines.errors import WorkerError
from dpnet.models import load_weights_into
from dpnet.models.lstm import CharLSTM
from dpnet.optim.optimizers import SGD, Momentum
from dpnet.training import fit_text
from dpnet.training.loop import call_all, check_checkpoint_path
from dpnet.training.text_checkpoint import load_text_checkpoint

pytestmark = pytest.mark.timeout(120)
TEXT = "the quick brown fox jumps over the lazy dog. " * 60


def mlp():
    return Sequential([Dense(20, 16, activation="relu"), Dense(16, 3, activation="softmax")],
                      optimizer=Momentum(lr=0.05), seed=1)


def xy(n=240):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 20)).astype(np.float32)
    return x, (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 1)


def text_setup():
    vocab = Vocabulary(TEXT)
    ids = vocab.encode(TEXT)
    return vocab, StreamBatcher(ids, 4, 16)


class Recorder:
    def __init__(self, stop_at=None):
        self.calls, self.stop_at = [], stop_at

    def __call__(self, when, record):
        self.calls.append(when)
        return self.stop_at is not None and when >= self.stop_at


def test_call_all_asks_every_callback_even_after_a_stop():
    first, second = Recorder(stop_at=0), Recorder()
    assert call_all([first, second], 0, {}) is True
    assert first.calls == [0] and second.calls == [0]
    assert call_all([Recorder(), Recorder()], 1, {}) is False


def test_fit_calls_every_callback_on_the_epoch_that_stops():
    x, y = xy()
    stopper, watcher = Recorder(stop_at=2), Recorder()
    h = mlp().fit(x, y, epochs=5, batch_size=60, callbacks=[stopper, watcher], verbose=0)
    assert stopper.calls == [1, 2] and watcher.calls == [1, 2]
    assert h.stopped_early and h.epochs == [1, 2]


def test_fit_text_calls_every_callback_on_the_record_that_stops():
    vocab, train = text_setup()
    stopper, watcher = Recorder(stop_at=20), Recorder()
    h = fit_text(CharLSTM(len(vocab), 8, seed=0), train, steps=60, log_every=10,
                 eval_every=0, sample_every=0, callbacks=[stopper, watcher], verbose=False)
    assert stopper.calls == [10, 20] and watcher.calls == [10, 20]
    assert h.stopped_early and h.step == 20


def test_checkpoint_path_is_checked_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="not a writable file path"):
        check_checkpoint_path(tmp_path)                       # a directory
    with pytest.raises(ValueError, match="not a writable file path"):
        check_checkpoint_path(tmp_path / "missing" / "ck.npz")
    vocab, train = text_setup()
    with pytest.raises(ValueError, match="not a writable file path"):
        fit_text(CharLSTM(len(vocab), 8), train, steps=5, checkpoint=tmp_path, verbose=False)


class KillAt(MultiprocessEngine):
    """Worker 1 is SIGKILLed as step ``at`` is sent; with on_failure="abort" the run ends."""

    def __init__(self, at, **kw):
        super().__init__(**kw)
        self.at = at

    def gradient(self, step, batch):
        if step == self.at:
            os.kill(self.group.pid(1), signal.SIGKILL)
        return super().gradient(step, batch)


def test_fit_writes_a_resumable_checkpoint_when_a_worker_fails(tmp_path):
    """Both loops now save on a worker failure (only fit_text did): the checkpoint holds
    the last whole step, and resuming from it ends where an uninterrupted run ends."""
    x, y = xy()
    straight = mlp()
    straight.fit(x, y, epochs=2, batch_size=60, verbose=0)
    ck = tmp_path / "ck.npz"
    m = mlp()
    with KillAt(6, workers=2, on_failure="abort") as eng, \
            pytest.raises(WorkerError, match="worker 1"):
        m.fit(x, y, epochs=2, batch_size=60, verbose=0, checkpoint=ck, engine=eng)
    resumed = mlp()
    meta = load_weights_into(resumed, ck)
    assert meta["training"]["step"] == 6                   # mid-epoch 2 (4 steps each)
    resumed.fit(x, y, epochs=2, batch_size=60, verbose=0,
                initial_step=meta["training"]["step"])
    assert np.allclose(resumed.params, straight.params, rtol=1e-5, atol=1e-7)


def test_fit_text_checkpoint_on_failure_still_holds(tmp_path):
    vocab, train = text_setup()
    ck = tmp_path / "t.npz"
    with KillAt(7, workers=2, on_failure="abort") as eng, pytest.raises(WorkerError):
        fit_text(CharLSTM(len(vocab), 8, optimizer=SGD(lr=0.3)), train, steps=20,
                 engine=eng, checkpoint=ck, eval_every=0, sample_every=0, verbose=False)
    assert load_text_checkpoint(ck).step == 7


def test_a_run_that_ends_writes_its_checkpoint_once_at_the_end(tmp_path):
    """epochs=0 trains nothing and still leaves the checkpoint the run was asked for."""
    x, y = xy()
    ck = tmp_path / "zero.npz"
    mlp().fit(x, y, epochs=0, batch_size=60, verbose=0, checkpoint=ck)
    assert dpnet.load(ck).optimizer.t == 0


def test_a_resumed_text_run_continues_the_smoothed_loss(tmp_path):
    vocab, train = text_setup()

    def model():
        return CharLSTM(len(vocab), 8, seed=0, optimizer=SGD(lr=0.3))
    straight = fit_text(model(), train, steps=20, eval_every=0, sample_every=0,
                        verbose=False)
    ck = tmp_path / "half.npz"
    fit_text(model(), train, steps=9, eval_every=0, sample_every=0, verbose=False,
             checkpoint=ck)
    c = load_text_checkpoint(ck)
    resumed = fit_text(c.model, train, steps=20, eval_every=0, sample_every=0,
                       verbose=False, initial_step=c.step, initial_state=c.state,
                       history=c.history)
    assert np.allclose(resumed.smooth_loss, straight.smooth_loss, rtol=1e-9)


def test_the_first_epoch_line_after_a_mid_epoch_resume_says_what_it_covers():
    x, y = xy()
    lines = []
    mlp().fit(x, y, epochs=3, batch_size=60, initial_step=6, print_fn=lines.append)
    assert "(resumed: the last 2 of 4 steps)" in lines[0] and "resumed" not in lines[1]
