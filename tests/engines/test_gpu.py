"""The GPU kind of worker, run on the stand-in device (NumPy under CuPy's host/device
rules) where there is no GPU: the same results as the in-process engine, both update
placements, resuming, pulling the weights home, and its failures."""
import os
import signal

import numpy as np
import pytest

from dpnet import Dense, Dropout, EarlyStopping, Sequential
from dpnet.data.text import StreamBatcher, Vocabulary
from dpnet.engines import LocalEngine, gpu_engine
from dpnet.engines.errors import WorkerError, WorkerUserError
from dpnet.models import load_weights_into
from dpnet.models.lstm import CharLSTM
from dpnet.optim.optimizers import Adam, Momentum
from dpnet.training import fit_text

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(autouse=True)
def standin(monkeypatch, no_workers_left):
    monkeypatch.setenv("DPNET_DEVICE", "standin")


def mlp(opt=None, dropout=0.2, l2=1e-3):
    return Sequential([Dense(30, 24, activation="relu"), Dropout(dropout),
                       Dense(24, 4, activation="softmax")],
                      optimizer=opt or Adam(lr=0.01), l2=l2, clip_norm=5.0, seed=4)


def data(n=300):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(n, 30)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + 2 * (x[:, 1] > 0)
    return x, y, x[:100] * 0.5, y[:100]


def fit(engine, **kw):
    x, y, xv, yv = data()
    m = mlp(**kw)
    h = m.fit(x, y, epochs=3, batch_size=32, validation_data=(xv, yv), engine=engine,
              verbose=0)
    return m, h


@pytest.mark.parametrize("update", ["worker", "coordinator"])
def test_the_gpu_worker_trains_as_the_in_process_engine(update):
    ref, href = fit(LocalEngine())
    with gpu_engine(0, update=update) as eng:
        m, h = fit(eng)
        s = eng.stats()
    assert np.array_equal(m.params, ref.params)
    for k in ("m", "v"):
        assert np.array_equal(m.optimizer.state[k], ref.optimizer.state[k])
    assert m.optimizer.t == ref.optimizer.t == 30
    assert h.history["val_loss"] == href.history["val_loss"]
    assert h.history["accuracy"] == href.history["accuracy"]
    assert s["kind"] == "gpu" and s["update"] == update
    assert "stand-in" in s["worker_info"]["0"]["device"]["name"]


def test_gradients_come_back_as_frames_from_several_devices():
    """Coordinator update over two GPU workers: indices, weights and gradients all
    travel as raw frames, and the fold adds them in rank order."""
    ref, _ = fit(LocalEngine(), opt=Momentum(lr=0.05), dropout=0.0)
    with gpu_engine([0, 0], update="coordinator") as eng:
        m, _ = fit(eng, opt=Momentum(lr=0.05), dropout=0.0)
    assert np.allclose(m.params, ref.params, rtol=1e-5, atol=1e-7)


def test_a_cpu_checkpoint_continues_on_the_gpu(tmp_path):
    x, y, _, _ = data()
    straight = mlp()
    straight.fit(x, y, epochs=3, batch_size=32, verbose=0)
    ck = tmp_path / "cpu.npz"
    mlp().fit(x, y, epochs=1, batch_size=32, verbose=0, checkpoint=ck)
    resumed = mlp()
    meta = load_weights_into(resumed, ck)
    with gpu_engine(0) as eng:                     # the optimizer state is PUSHed
        resumed.fit(x, y, epochs=3, batch_size=32, verbose=0, engine=eng,
                    initial_step=meta["training"]["step"])
    assert np.array_equal(resumed.params, straight.params)


def test_weights_come_home_only_when_asked_and_host_changes_win():
    x, y, xv, yv = data()
    m = mlp()
    with gpu_engine(0) as eng:
        eng.start(m, {"train": (x, y), "val": (xv, yv)})
        before = m.params.copy()
        for step in range(3):
            eng.step(step, np.arange(step * 32, (step + 1) * 32))
        assert np.array_equal(m.params, before)    # still on the device
        eng.sync_to_host()
        assert not np.array_equal(m.params, before) and m.optimizer.t == 3
        on_device = eng.evaluate("val")
        m.params[...] = before                     # the host's weights count again
        eng.weights_changed(3)
        back = eng.evaluate("val")[0]
        assert back != on_device[0]
        host = mlp()
        host.params[...] = before
        assert back == pytest.approx(host.evaluate(xv, yv)["loss"], rel=1e-6)


def test_early_stopping_restores_its_weights_with_the_optimizer_on_the_device():
    x, y, xv, yv = data()

    def run(engine):
        m = mlp(opt=Adam(lr=0.3))                 # too fast: validation loss climbs
        es = EarlyStopping(patience=1)
        m.fit(x, y, epochs=8, batch_size=32, validation_data=(xv, yv), callbacks=[es],
              engine=engine, verbose=0)
        return m
    ref = run(LocalEngine())
    with gpu_engine(0) as eng:
        m = run(eng)
    assert np.array_equal(m.params, ref.params)


def text_model():
    text = "all that glitters is not gold; all that wander are not lost. " * 30
    vocab = Vocabulary(text)
    ids = vocab.encode(text)
    return vocab, StreamBatcher(ids[:1600], 4, 12), StreamBatcher(ids[1600:], 2, 12)


@pytest.mark.parametrize("update", ["worker", "coordinator"])
def test_the_lstm_trains_on_the_gpu_as_in_process(update, tmp_path):
    vocab, train, val = text_model()
    runs = {}
    for name, engine in (("local", LocalEngine()), ("gpu", gpu_engine(0, update=update))):
        m = CharLSTM(len(vocab), 16, seed=1, num_layers=2, clip_norm=1.0)
        h = fit_text(m, train, val, steps=40, engine=engine, eval_every=20, sample_every=20,
                     sample_length=20, vocab=vocab, verbose=False,
                     checkpoint=tmp_path / f"{name}.npz", save_every=15)
        engine.close()
        runs[name] = (m, h)
    (a, ha), (b, hb) = runs["local"], runs["gpu"]
    assert np.array_equal(a.params, b.params)
    assert ha.val_loss == hb.val_loss and ha.samples == hb.samples
    from dpnet.training.text_checkpoint import load_text_checkpoint
    ca, cb = (load_text_checkpoint(tmp_path / f"{n}.npz") for n in ("local", "gpu"))
    assert ca.step == cb.step == 40
    assert np.array_equal(ca.model.params, cb.model.params)


def test_a_device_error_mid_run_saves_the_last_good_weights(tmp_path, monkeypatch):
    """The stand-in's 700th device operation fails, in the middle of a step: the
    checkpoint holds the weights of the last whole step, pulled from the device."""
    x, y, _, _ = data()
    monkeypatch.setenv("DPNET_STANDIN_FAIL_AFTER", "700")
    ck = tmp_path / "ck.npz"
    m = mlp()
    with gpu_engine(0) as eng, pytest.raises(WorkerError, match="device failed: DeviceFault"):
        m.fit(x, y, epochs=3, batch_size=32, engine=eng, verbose=0, checkpoint=ck)
    reloaded = mlp()
    meta = load_weights_into(reloaded, ck)
    s = meta["training"]["step"]
    assert 0 < s < 30
    ref = mlp()                                    # the same s steps in process
    ref.fit(x, y, epochs=3, batch_size=32, verbose=0, engine=_Steps(s), on_interrupt="return")
    assert np.array_equal(reloaded.params, ref.params)


class _Steps(LocalEngine):
    """The in-process engine, stopping the run (as Ctrl-C would) after ``n`` steps."""

    def __init__(self, n):
        super().__init__()
        self.n = n

    def step(self, step, batch):
        out = super().step(step, batch)
        if step + 1 == self.n:
            os.kill(os.getpid(), signal.SIGINT)
        return out


def test_data_that_does_not_fit_is_refused_before_training(monkeypatch):
    monkeypatch.setenv("DPNET_STANDIN_MEMORY", str(10_000))
    x, y, _, _ = data()
    with gpu_engine(0) as eng, pytest.raises(WorkerUserError, match=r"need .* MiB on"):
        mlp().fit(x, y, epochs=1, batch_size=32, engine=eng, verbose=0)


def test_a_dead_gpu_worker_that_held_the_weights_ends_the_run():
    x, y, _, _ = data()
    m = mlp()
    with gpu_engine(0) as eng:
        eng.start(m, {"train": (x, y)})
        eng.step(0, np.arange(32))
        os.kill(eng.group.pid(0), signal.SIGKILL)
        with pytest.raises(WorkerError, match="are lost"):
            eng.step(1, np.arange(32, 64))


def test_a_dead_gpu_worker_is_replaced_when_the_coordinator_updates():
    from dpnet.engines.coordinator import Coordinator
    ref, _ = fit(LocalEngine())

    class Kill(Coordinator):
        def gradient(self, step, batch):
            if step == 7:
                os.kill(self.group.pid(0), signal.SIGKILL)
            return super().gradient(step, batch)

    from dpnet.engines.gpu import GpuProcesses
    with Kill(GpuProcesses(0, update="coordinator")) as eng:
        m, _ = fit(eng)
        assert eng.respawns == 1
    assert np.array_equal(m.params, ref.params)
