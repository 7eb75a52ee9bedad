import re
import subprocess
import sys

import numpy as np
import pytest

import dpnet
from dpnet import Dense, Dropout, Sequential
from dpnet.training import EarlyStopping, History


def mlp(seed=0, dropout=0.0, opt="adam"):
    layers = [Dense(784, 64, activation="relu")]
    if dropout:
        layers.append(Dropout(dropout))
    layers.append(Dense(64, 10, activation="softmax"))
    return Sequential(layers, optimizer=opt, seed=seed)


@pytest.mark.slow
def test_reaches_92_percent_on_mnist_from_10k_samples_in_2_epochs(mnist_small):
    d = mnist_small
    m = Sequential([Dense(784, 512, activation="relu"), Dense(512, 128, activation="relu"),
                    Dense(128, 64, activation="relu"), Dense(64, 10, activation="softmax")])
    h = m.fit(d.x_train, d.y_train, epochs=2, batch_size=64, validation_data=(d.x_val, d.y_val),
              verbose=0)
    acc = m.evaluate(d.x_test, d.y_test)["accuracy"]
    assert acc >= 0.92, acc
    assert h.history["val_accuracy"][-1] >= 0.92
    assert h.history["loss"][1] < h.history["loss"][0]


def test_resume_from_checkpoint_is_exact(mnist_small, tmp_path):
    d = mnist_small
    x, y = d.x_train[:1200], d.y_train[:1200]
    straight = mlp(dropout=0.2)
    straight.fit(x, y, epochs=3, batch_size=100, verbose=0)
    first = mlp(dropout=0.2)
    ck = tmp_path / "ck.npz"
    first.fit(x, y, epochs=1, batch_size=100, verbose=0, checkpoint=ck)
    resumed = mlp(seed=99, dropout=0.2)            # different init: all must come from the file
    meta = dpnet.models.load_weights_into(resumed, ck)
    assert meta["training"]["step"] == 12
    h = resumed.fit(x, y, epochs=3, batch_size=100, verbose=0, seed=0,
                    initial_step=meta["training"]["step"])
    assert h.epochs == [2, 3]
    assert np.array_equal(resumed.params, straight.params)


def test_shuffle_and_seed_change_the_result(mnist_small):
    x, y = mnist_small.x_train[:500], mnist_small.y_train[:500]
    runs = {}
    for key, kw in {"a": {}, "a2": {}, "seed": {"seed": 5}, "noshuf": {"shuffle": False}}.items():
        m = mlp()
        m.fit(x, y, epochs=1, batch_size=50, verbose=0, **kw)
        runs[key] = m.params.copy()
    assert np.array_equal(runs["a"], runs["a2"])
    assert not np.array_equal(runs["a"], runs["seed"])
    assert not np.array_equal(runs["a"], runs["noshuf"])


def test_last_partial_batch_is_used(mnist_small):
    x, y = mnist_small.x_train[:103], mnist_small.y_train[:103]
    m = mlp()
    h = m.fit(x, y, epochs=1, batch_size=50, verbose=0)
    assert m.optimizer.t == 3 and h.samples == 103


def test_callback_stops_and_receives_metrics(mnist_small):
    seen = []

    def cb(epoch, metrics):
        seen.append((epoch, sorted(metrics)))
        return epoch == 2

    m = mlp()
    h = m.fit(mnist_small.x_train[:300], mnist_small.y_train[:300], epochs=10, batch_size=100,
              validation_data=(mnist_small.x_val[:200], mnist_small.y_val[:200]),
              callbacks=[cb], verbose=0)
    assert [e for e, _ in seen] == [1, 2] and h.stopped_early and h.epochs == [1, 2]
    assert seen[0][1] == ["accuracy", "loss", "lr", "seconds", "val_accuracy", "val_loss"]


def test_early_stopping_restores_the_best_weights():
    es = EarlyStopping(patience=2)
    m = mlp()
    es.set_model(m)
    assert not es(1, {"val_loss": 1.0})
    best = m.params.copy()
    m.params += 1
    assert not es(2, {"val_loss": 1.5})
    assert es(3, {"val_loss": 1.2})                   # two epochs without improvement
    assert not np.array_equal(m.params, best)         # (the other callbacks' turn)
    es.on_stop()
    assert np.array_equal(m.params, best) and es.best_epoch == 1
    es1 = EarlyStopping(patience=1)
    assert not es1(1, {"val_loss": 1.0}) and es1(2, {"val_loss": 1.0})   # no improvement
    with pytest.raises(ValueError, match="monitors 'val_loss'"):
        EarlyStopping()(1, {"loss": 1.0})
    for bad in (float("nan"), -0.1, float("inf"), "0", None):
        with pytest.raises(ValueError, match=re.escape(f"min_delta must be a finite number "
                                                       f">= 0, got {bad!r}")):
            EarlyStopping(min_delta=bad)
    assert EarlyStopping(min_delta=np.float32(0.5)).min_delta == 0.5


def test_sigint_stops_after_the_current_step_and_keeps_weights(mnist_small):
    import os
    import signal

    class Interrupting(dpnet.engines.LocalEngine):
        def gradient(self, step, idx):
            if step == 4:
                os.kill(os.getpid(), signal.SIGINT)   # a real Ctrl-C, mid-epoch
            return super().gradient(step, idx)

    x, y = mnist_small.x_train[:1000], mnist_small.y_train[:1000]
    m = mlp()
    h = m.fit(x, y, epochs=5, batch_size=100, engine=Interrupting(), verbose=0,
              on_interrupt="return")
    assert h.interrupted and h.step == 5 and m.optimizer.t == 5
    assert np.isfinite(m.params).all()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler   # restored
    m.predict(mnist_small.x_val[:10])                  # the model stays usable
    # by default the Ctrl-C goes on to the program once the step is done: a library
    # call must not swallow it (a loop of fits would run on, a script exit 0)
    m = mlp()
    with pytest.raises(KeyboardInterrupt) as e:
        m.fit(x, y, epochs=5, batch_size=100, engine=Interrupting(), verbose=0)
    assert e.value.history.interrupted and e.value.history.step == 5 and m.optimizer.t == 5
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with pytest.raises(ValueError, match="on_interrupt must be 'raise' or 'return'"):
        m.fit(x, y, on_interrupt="ignore")


def test_a_signal_the_process_ignores_stays_ignored(mnist_small):
    """nohup ignores SIGHUP, a non-interactive shell's background job SIGINT: training
    must not take them over and stop on a hang-up the user asked to survive."""
    import os
    import signal

    class HangUp(dpnet.engines.LocalEngine):
        def gradient(self, step, idx):
            if step == 2:
                os.kill(os.getpid(), signal.SIGHUP)
            return super().gradient(step, idx)

    old = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        h = mlp().fit(mnist_small.x_train[:500], mnist_small.y_train[:500], epochs=2,
                      batch_size=100, engine=HangUp(), verbose=0)
        assert not h.interrupted and h.step == 10
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, old)


def test_divergence_is_reported_not_trained_through(mnist_small):
    m = Sequential([Dense(784, 10, activation="linear")], loss="mse",
                   optimizer=dpnet.optimizers.SGD(lr=1e6))
    with pytest.raises(FloatingPointError, match="diverged"):
        with np.errstate(all="ignore"):
            m.fit(mnist_small.x_train[:2000] * 1e3, mnist_small.y_train[:2000], epochs=3,
                  batch_size=100, verbose=0)


def test_bad_arguments():
    m = mlp()
    x, y = np.zeros((10, 784), np.float32), np.zeros(10, np.int64)
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        m.fit(x, y, batch_size=0)
    with pytest.raises(ValueError, match="10 inputs but 9 targets"):
        m.fit(x, y[:9])
    with pytest.raises(ValueError, match=r"labels must be in \[0, 10\), got \[0, 12\]"):
        m.fit(x, np.r_[y[:9], 12])
    with pytest.raises(ValueError, match=r"shape \(n, 784\), got \(10, 5\)"):
        m.fit(np.zeros((10, 5)), y)
    assert isinstance(m.fit(x, y, epochs=0, verbose=0), History)


def test_early_stopping_puts_back_the_best_weights_after_every_callback(tmp_path):
    """As Keras's (at the end of training): a callback after EarlyStopping in the list
    sees the last epoch's weights with its metrics -- a ModelCheckpoint saving every
    epoch wrote the restored best weights under the last epoch's name -- and one that
    stops training itself leaves the weights alone."""
    from dpnet.training import ModelCheckpoint
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 784)).astype(np.float32)
    y = rng.integers(0, 10, 200)
    val = (x[:50], y[:50])
    ref = mlp(opt="sgd")
    ref.fit(x, y, epochs=1, batch_size=50, verbose=0)
    ref3 = mlp(opt="sgd")
    ref3.fit(x, y, epochs=3, batch_size=50, verbose=0)
    es = EarlyStopping(patience=2, min_delta=100.0)
    every = ModelCheckpoint(str(tmp_path / "m-{epoch}.npz"), save_best_only=False)
    m = mlp(opt="sgd")
    h = m.fit(x, y, epochs=10, batch_size=50, validation_data=val, callbacks=[es, every],
              verbose=0)
    assert h.epochs == [1, 2, 3] and h.stopped_early
    assert np.array_equal(m.params, ref.params)
    assert np.array_equal(dpnet.load(tmp_path / "m-3.npz").params, ref3.params)
    # another callback stops training: EarlyStopping's patience has not run out
    other = mlp(opt="sgd")
    other.fit(x, y, epochs=10, batch_size=50, validation_data=val, verbose=0,
              callbacks=[EarlyStopping(patience=5, min_delta=100.0),
                         lambda epoch, metrics: epoch == 3])
    assert np.array_equal(other.params, ref3.params)


def test_keras_style_validation_split_initial_epoch_and_model_checkpoint(tmp_path):
    from dpnet.training import ModelCheckpoint
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 784)).astype(np.float32)
    y = rng.integers(0, 10, 400)
    a, b = mlp(opt="sgd"), mlp(opt="sgd")
    ha = a.fit(x, y, epochs=1, batch_size=50, validation_split=0.25, verbose=0)
    hb = b.fit(x[:300], y[:300], epochs=1, batch_size=50, validation_data=(x[300:], y[300:]),
               verbose=0)
    assert np.array_equal(a.params, b.params) and ha.history == hb.history | {
        "seconds": ha.history["seconds"]}
    # initial_epoch=1 of 3 is the run resumed after epoch 1's 8 steps
    c, d = mlp(opt="sgd"), mlp(opt="sgd")
    assert c.fit(x, y, epochs=3, batch_size=50, initial_epoch=1, verbose=0).epochs == [2, 3]
    d.fit(x, y, epochs=3, batch_size=50, initial_step=8, verbose=0)
    assert np.array_equal(c.params, d.params)
    with pytest.raises(ValueError, match="not both"):
        c.fit(x, y, validation_split=0.2, validation_data=(x, y), verbose=0)
    with pytest.raises(ValueError, match="validation_split must be a fraction"):
        c.fit(x, y, validation_split=1.5, verbose=0)
    # the best epoch by validation loss is what the file holds
    best = ModelCheckpoint(tmp_path / "best.npz")
    e = mlp(opt=dpnet.optimizers.SGD(lr=0.5))
    h = e.fit(x, y, epochs=4, batch_size=50, validation_split=0.25, callbacks=[best],
              verbose=0)
    k = int(np.argmin(h.history["val_loss"])) + 1
    saved = dpnet.load(tmp_path / "best.npz")
    assert saved.checkpoint_meta["epoch"] == k
    assert saved.checkpoint_meta["metrics"]["val_loss"] == min(h.history["val_loss"])


def test_early_stopping_state_goes_into_the_checkpoint_and_comes_back(tmp_path):
    """fit's checkpoint holds each EarlyStopping's state and best weights; ``resume``
    gives them to the next run (set_model keeps them once), and refuses a bad state."""
    from dpnet.storage.checkpoint import read_checkpoint
    x, y = np.random.default_rng(0).normal(size=(60, 784)).astype(np.float32), \
        np.arange(60) % 10
    m = mlp()
    es = EarlyStopping(patience=50)
    ck = tmp_path / "ck.npz"
    m.fit(x[:40], y[:40], epochs=3, batch_size=20, validation_data=(x[40:], y[40:]),
          callbacks=[es], verbose=0, checkpoint=ck)
    arrays, meta = read_checkpoint(ck)
    (state,) = meta["training"]["early_stopping"]
    assert state == es.state() and state["best_epoch"] == es.best_epoch
    assert np.array_equal(arrays["early.0.best_params"], es.best_params)
    again = EarlyStopping(patience=50)
    again.resume(state, arrays["early.0.best_params"])
    again.set_model(m)                                  # the resumed state survives once
    assert again.state() == state and np.array_equal(again.best_params, es.best_params)
    again.set_model(m)                                  # ... and a later run starts afresh
    assert again.best is None and again.best_params is None
    assert not again.stopped
    for bad in ({"monitor": "val_loss"}, {**state, "wait": -1}, {**state, "best": "x"}):
        with pytest.raises(ValueError, match="malformed"):
            EarlyStopping().resume(bad)
    with pytest.raises(ValueError, match="monitors 'val_loss', not 'val_accuracy'"):
        EarlyStopping(monitor="val_accuracy").resume(state)
    stopped = EarlyStopping(patience=2)
    stopped.resume({**state, "wait": 2})
    assert stopped.stopped
    for bad in ({**state, "wait": True}, {**state, "best": float("nan")}):
        with pytest.raises(ValueError, match="malformed"):
            EarlyStopping().resume(bad)


def test_resumed_best_weights_go_back_onto_a_device_model(monkeypatch):
    """The checkpoint's best weights are host arrays; a model on the device (the
    stand-in: a host array in a device formula raises) takes them copied in."""
    from dpnet import backend
    monkeypatch.setenv("DPNET_DEVICE", "standin")
    sd = backend.device_xp()
    m = Sequential([Dense(4, 3, activation="softmax")])
    m.rebind(params=sd.asarray(m.params), grads=sd.asarray(m.grads))   # as a GPU worker
    es = EarlyStopping(patience=1)
    es.resume({"monitor": "val_loss", "best": 0.5, "best_epoch": 1, "wait": 0},
              np.ones(m.n_params, np.float32))
    es.set_model(m)
    assert es(2, {"val_loss": 0.9})                      # worse: stop, restore epoch 1's
    es.on_stop()
    assert np.array_equal(m.params.get(), np.ones(m.n_params))


SIGTERM_IN_FIT = """
import os, signal, sys
import numpy as np
import dpnet
from dpnet.engines.coordinator import MultiprocessEngine

class Term(MultiprocessEngine):
    def step(self, step, batch):
        out = super().step(step, batch)
        if step == 3:
            print("workers", self.group.pid(0), self.group.pid(1), flush=True)
            os.kill(os.getpid(), signal.SIGTERM)       # as timeout, docker stop, Slurm
        return out

rng = np.random.default_rng(0)
x, y = rng.normal(size=(400, 20)).astype(np.float32), rng.integers(0, 3, 400)
m = dpnet.Sequential([dpnet.Dense(20, 8, activation="relu"),
                      dpnet.Dense(8, 3, activation="softmax")])
with Term(workers=2) as engine:
    try:
        m.fit(x, y, epochs=50, batch_size=40, engine=engine, verbose=0,
              checkpoint=sys.argv[1])
        print("fit returned", flush=True)
    finally:
        print("finally ran", flush=True)
"""


def test_sigterm_in_a_library_fit_ends_the_program_after_winding_up(tmp_path):
    """SIGTERM stops training after the step and saves -- then ends the program, exit
    status 143 as SIGTERM's own (it ran on and exited 0), after the program's finally
    blocks and with-exits, so its engine stops the workers and removes the shared
    memory."""
    import subprocess
    import sys
    import psutil
    from conftest import ROOT, run_leftovers
    ck = tmp_path / "ck.npz"
    p = subprocess.Popen([sys.executable, "-c", SIGTERM_IN_FIT, str(ck)], text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 143, (p.returncode, out, err)
    assert "fit returned" not in out and "finally ran" in out and "Traceback" not in err, err
    assert run_leftovers(p.pid) == []
    pids = [int(w) for w in out.split()[1:3]]
    assert len(pids) == 2 and not any(psutil.pid_exists(w) and psutil.Process(w).status()
                                      != psutil.STATUS_ZOMBIE for w in pids)
    import dpnet
    assert dpnet.load(ck).optimizer.t == 4
    from dpnet.storage.checkpoint import read_checkpoint_meta
    assert read_checkpoint_meta(ck)["training"]["history"]["interrupted"] is True


def test_callbacks_are_checked_before_training_and_checkpoint_paths_take_metrics(tmp_path):
    x, y = np.random.default_rng(0).normal(size=(60, 784)).astype(np.float32), \
        np.arange(60) % 10
    m = mlp()
    for cbs, words in ((EarlyStopping(), "callbacks must be a list of callbacks, got "
                                         "EarlyStopping"),
                       ([EarlyStopping()], "EarlyStopping monitors 'val_loss', which this "
                                           "run does not report .* give validation_data"),
                       ([EarlyStopping(monitor="test_accuracy")], "monitors 'test_accuracy'"),
                       ([dpnet.ModelCheckpoint(tmp_path / "x.npz")], "ModelCheckpoint "
                                                                      "monitors 'val_loss'"),
                       ([3], "callbacks must be callables")):
        with pytest.raises(ValueError, match=words):
            m.fit(x, y, epochs=1, verbose=0, callbacks=cbs)
        assert m.optimizer.t == 0                              # nothing was trained
    # every epoch's checkpoint, named as Keras names them
    ck = dpnet.ModelCheckpoint(str(tmp_path / "m-{epoch:02d}-{val_loss:.3f}.npz"),
                               save_best_only=False)
    h = m.fit(x[:40], y[:40], epochs=2, verbose=0, validation_data=(x[40:], y[40:]),
              callbacks=[ck])
    assert [p.rsplit("/", 1)[1] for p in ck.saved] == \
        [f"m-{e:02d}-{v:.3f}.npz" for e, v in zip((1, 2), h.history["val_loss"])]
    for name in ("{val_los}", "{val_loss}"):            # a typo; no validation data
        bad = dpnet.ModelCheckpoint(str(tmp_path / f"{name}.npz"), save_best_only=False)
        with pytest.raises(ValueError, match=f"names {name[1:-1]}, which this run does "
                                             f"not report"):
            m.fit(x[:40], y[:40], epochs=1, verbose=0, callbacks=[bad])
    assert m.optimizer.t == 4                            # (the two epochs above) no more


def no_hard_links(src, dst, **kw):
    raise PermissionError(1, "Operation not permitted")      # (as vfat, some FUSE mounts)


def test_a_diverged_run_never_leaves_its_checkpoint_with_the_weights_that_diverged(
        tmp_path, capfd):
    """One step per epoch, no validation: the checkpoint of an epoch's end holds the
    weights whose loss the next step finds not finite; it is put back to the file it
    replaced (here the run's start). With validation the epoch's weights are judged
    before they are written. Weights that are not finite are never written."""
    from dpnet.models.loading import load_weights_into
    from dpnet.training.loop import Diverged
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 784)).astype(np.float32)
    y = rng.integers(0, 10, 200)

    def net(lr):
        return Sequential([Dense(784, 16, activation="relu"),
                           Dense(16, 10, activation="softmax")],
                          optimizer=dpnet.optimizers.SGD(lr=lr), seed=0)
    ck = tmp_path / "m.npz"
    net(0.01).fit(x, y, epochs=1, batch_size=200, checkpoint=ck, verbose=0)
    good = ck.read_bytes()
    for validation in (None, (x[:50], y[:50])):
        m = net(1e30)
        load_weights_into(m, ck, optimizer="state")
        with pytest.raises(Diverged, match="diverged"), np.errstate(all="ignore"):
            m.fit(x, y, epochs=6, batch_size=200, checkpoint=ck, initial_step=1, verbose=0,
                  validation_data=validation)
        assert ck.read_bytes() == good
        err = capfd.readouterr().err
        assert (f"dpnet: note: {ck} held the weights of step 2, which diverged: put back "
                f"to the checkpoint it replaced") in err if validation is None else \
            "note" not in err, err
    # the earlier file is kept as a hard link beside it, at any size, and the link goes
    # when the run ends; a link a killed run left (its pid gone) is swept
    import dpnet.training.loop as loop
    big = tmp_path / "big.npz"
    big.write_bytes(good)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    stale = tmp_path / f".dpnet-previous-{dead}-big.npz"
    stale.write_bytes(b"an old checkpoint's disk space")
    m = net(1e30)
    load_weights_into(m, big, optimizer="state")
    with pytest.MonkeyPatch.context() as mp, pytest.raises(Diverged), \
            np.errstate(all="ignore"):
        mp.setattr(loop, "KEEP_PREVIOUS_BYTES", 100)
        m.fit(x, y, epochs=6, batch_size=200, checkpoint=big, initial_step=1, verbose=0)
    assert big.read_bytes() == good and "put back to the checkpoint it replaced" in \
        capfd.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.npz", "m.npz"]
    # on a file system without hard links its bytes are kept in memory -- up to a size:
    # a bigger file is not put back, and said so
    m = net(1e30)
    load_weights_into(m, big, optimizer="state")
    with pytest.MonkeyPatch.context() as mp, pytest.raises(Diverged), \
            np.errstate(all="ignore"):
        mp.setattr(loop, "KEEP_PREVIOUS_BYTES", 100)
        mp.setattr(loop.os, "link", no_hard_links)
        m.fit(x, y, epochs=6, batch_size=200, checkpoint=big, initial_step=1, verbose=0)
    assert "(the file it replaced was too big to keep in memory and put back)" in \
        capfd.readouterr().err
    big.write_bytes(good)
    m = net(1e30)
    load_weights_into(m, big, optimizer="state")
    with pytest.MonkeyPatch.context() as mp, pytest.raises(Diverged), \
            np.errstate(all="ignore"):
        mp.setattr(loop.os, "link", no_hard_links)
        m.fit(x, y, epochs=6, batch_size=200, checkpoint=big, initial_step=1, verbose=0)
    assert big.read_bytes() == good and "put back to the checkpoint it replaced" in \
        capfd.readouterr().err
    # a fresh run: no earlier file to put back, said so
    fresh = tmp_path / "fresh.npz"
    with pytest.raises(Diverged), np.errstate(all="ignore"):
        net(1e30).fit(x, y, epochs=6, batch_size=200, checkpoint=fresh, verbose=0)
    assert "(it replaced no earlier checkpoint that could be put back)" in \
        capfd.readouterr().err
    # a loss that is not finite before any update: the data, not the learning rate
    with pytest.raises(Diverged, match="before any update of this run: the data or the "
                       "weights it starts from give a loss that is not finite"), \
            np.errstate(all="ignore"):
        net(0.01).fit(x, y, epochs=1, batch_size=200, sample_weight=np.full(200, 1e39),
                      verbose=0)


def test_weights_that_are_not_finite_are_not_saved(tmp_path):
    """dpnet.load refuses them: model.save does too, and writes nothing."""
    m = mlp()
    m.params[5] = np.nan
    with pytest.raises(ValueError, match=re.escape(f"the model's weights are not finite (1 "
                                                   f"of {m.n_params:,}): not saved to")):
        m.save(tmp_path / "m.npz")
    assert not (tmp_path / "m.npz").exists()


@pytest.mark.timeout(60)
def test_a_checkpoint_onto_a_fifo_is_written_not_read(tmp_path):
    """The file a checkpoint replaces is kept to be put back -- a regular file only: a
    FIFO would block the read (the run hung at its first save)."""
    import os
    import threading
    fifo = tmp_path / "ck.fifo"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(len(open(fifo, "rb").read())))
    reader.start()
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 784)).astype(np.float32), rng.integers(0, 10, 40)
    mlp().fit(x, y, epochs=1, batch_size=40, checkpoint=fifo, verbose=0)
    reader.join(10)
    assert got and got[0] > 1000
