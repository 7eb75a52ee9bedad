"""The LSTM through the engines: same weights for 0, 1 and 2 workers, and a respawn
in the middle of an epoch changes nothing (the stream state is double-buffered)."""
import os
import signal

import numpy as np
import pytest

from dpnet.data.text import StreamBatcher, Vocabulary
from dpnet.engines import LocalEngine
from dpnet.engines.coordinator import MultiprocessEngine
from dpnet.models.lstm import CharLSTM
from dpnet.optim.optimizers import SGD

# the LSTM engines under the same leak check as the MLP's (tests/engines/test_multiprocess.py)
pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("nothing_left")]
TEXT = ("the quick brown fox jumps over the lazy dog. " * 40 +
        "pack my box with five dozen liquor jugs! " * 30)


def batches():
    vocab = Vocabulary(TEXT)
    ids = vocab.encode(TEXT)
    cut = int(len(ids) * 0.9)
    return vocab, StreamBatcher(ids[:cut], 5, 16), StreamBatcher(ids[cut:], 3, 16)


def run(engine, epochs=2, kill_at=None, layers=1):
    vocab, train, val = batches()
    # plain SGD: Adagrad's g / sqrt(cache) would turn a last-bit difference in a
    # near-zero gradient (sums in another order) into a whole step of either sign
    m = CharLSTM(len(vocab), 24, seed=3, optimizer=SGD(lr=0.5), num_layers=layers)
    engine.start(m, {"train": train, "val": val}, seed=0)
    losses, step = [], 0
    try:
        for epoch in range(epochs):
            for k in range(len(train)):
                if kill_at == step:
                    os.kill(engine.group.pid(1), signal.SIGKILL)
                loss, n, _ = engine.gradient(step, k)
                assert n == 5 * 16
                m.apply_gradients()
                step += 1
                engine.weights_changed(step)
                losses.append(loss)
        val_loss = engine.evaluate("val")
    finally:
        engine.close()
    return m, losses, val_loss


@pytest.mark.parametrize("layers", [1, 2])
def test_worker_count_does_not_change_the_weights(layers):
    ref, ref_losses, ref_val = run(LocalEngine(), layers=layers)
    for workers in (1, 2):
        m, losses, val = run(MultiprocessEngine(workers=workers), layers=layers)
        assert np.allclose(m.params, ref.params, rtol=1e-5, atol=1e-6), workers
        assert np.allclose(losses, ref_losses, rtol=1e-5)
        assert val[1] == ref_val[1] and val[0] == pytest.approx(ref_val[0], rel=1e-5)
    assert ref_losses[-1] < ref_losses[0]


def test_local_engine_matches_a_hand_written_tbptt_loop():
    vocab, train, _ = batches()
    m = CharLSTM(len(vocab), 24, seed=3, optimizer=SGD(lr=0.5))
    for _ in range(2):
        state = None                                  # reset at each epoch
        for x, y in train:
            _, _, state = m.loss_and_grad(x, y, state)
            m.apply_gradients()
    ref, _, _ = run(LocalEngine())
    assert np.array_equal(m.params, ref.params)


def test_respawn_mid_epoch_gives_the_uninterrupted_result():
    # two layers: the carried state of both must survive the respawn
    clean, _, _ = run(MultiprocessEngine(workers=2), epochs=1, layers=2)
    eng = MultiprocessEngine(workers=2)
    m, _, _ = run(eng, epochs=1, kill_at=4, layers=2)
    assert eng.respawns == 1
    assert np.array_equal(m.params, clean.params)


def test_a_rerun_chunk_starts_from_the_same_state():
    """What makes respawn exact: running chunk k's shard twice (a worker that died after
    writing its new state, then its replacement) gives the same gradient and state."""
    vocab, train, val = batches()
    m = CharLSTM(len(vocab), 24, seed=3)
    eng = LocalEngine()
    eng.start(m, {"train": train, "val": val})
    for step in range(3):                               # carry some state first
        eng.gradient(step, step)
    units, extra, index = eng.task_cls.plan_step(eng.arrays, 3, 3)
    header = {"step": 3, "start": 1, "stop": 4, **extra}
    outs = []
    for _ in range(2):
        loss, _, _ = eng.task.step(header, index)
        outs.append((loss, m.grads.copy(), eng.get_state(4)[0][1:4].copy()))
    assert outs[0][0] == outs[1][0]
    assert np.array_equal(outs[0][1], outs[1][1]) and np.array_equal(outs[0][2], outs[1][2])
    assert np.abs(eng.get_state(3)[0][1:4]).sum() > 0   # it did start from a carried state


def test_validation_loss_is_the_models_own_evaluation():
    vocab, train, val = batches()
    m = CharLSTM(len(vocab), 24, seed=3)
    expect = m.evaluate(val)["loss"]                   # state carried, from zero
    for engine in (LocalEngine(), MultiprocessEngine(workers=2)):
        engine.start(m, {"train": train, "val": val})
        try:
            loss, n, _ = engine.evaluate("val")
        finally:
            engine.close()
        assert n == val.batch_size * val.seq_len * len(val)
        assert loss == pytest.approx(expect, rel=1e-6)
