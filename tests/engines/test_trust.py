"""What the coordinator trusts: only the workers it started, by identities nobody else
knows. A flood of hostile messages on its socket while a real multi-worker run trains
-- garbage, every kind with random and cut headers, well-formed replies and ERRORs that
claim other ranks and steps, a peer claiming a live worker's identity -- changes
nothing: the same weights bit for bit, no error, nothing left behind."""
import time

import numpy as np
import pytest

from dpnet import Dense, Dropout, Sequential
from dpnet.data.text import StreamBatcher, Vocabulary
from dpnet.engines.coordinator import MultiprocessEngine
from dpnet.engines.errors import WorkerError
from dpnet.models.lstm import CharLSTM
from dpnet.optim.optimizers import SGD, Momentum
from dpnet.parallel import protocol as P
from dpnet.training import fit_text
from hostile import Flood

pytestmark = [pytest.mark.timeout(180), pytest.mark.usefixtures("no_workers_left")]


class Flooded(MultiprocessEngine):
    """Starts a flood on its own socket once its workers are up."""

    def __init__(self, n, **kw):
        super().__init__(**kw)
        self.n = n
        self.flood = None

    def start(self, model, datasets, seed=0):
        super().start(model, datasets, seed)
        self.flood = Flood(self.group.router.endpoint, self.n,
                           taken=self.group.children[0].identity)
        self.flood.start()

    def close(self):
        if self.flood is not None:
            self.flood.release.set()
            self.flood.join(10)
        super().close()

    def drain(self):
        """Rounds (evaluations, which change no weight) until the coordinator has read
        every message the flood could deliver."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (
                self.flood.sent < self.flood.n or
                self.group.drops.count < self.flood.delivered):
            self.evaluate("val")
        self.flood.release.set()
        self.flood.join(10)


def mlp():
    return Sequential([Dense(64, 32, activation="relu"), Dropout(0.2),
                       Dense(32, 4, activation="softmax")],
                      optimizer=Momentum(lr=0.05), seed=3)


def mlp_run(engine):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(800, 64)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + 2 * (x[:, 1] > 0)
    m = mlp()
    h = m.fit(x, y, epochs=3, batch_size=50, validation_data=(x[:200], y[:200]),
              engine=engine, verbose=0)
    return m, h


def test_a_flood_changes_nothing_in_an_mlp_run(capfd, caplog):
    with MultiprocessEngine(workers=2) as eng:
        ref, href = mlp_run(eng)
    eng = Flooded(10_000, workers=2, on_failure="abort")
    with eng:
        m, h = mlp_run(eng)
        eng.drain()
        stats = eng.stats()
    assert eng.flood.error is None and eng.flood.sent == 10_000
    assert np.array_equal(m.params, ref.params)
    assert h.history["val_loss"] == href.history["val_loss"] and eng.respawns == 0
    # every message that reached the socket was refused and counted, none acted on
    assert stats["dropped"] == eng.flood.delivered == 8_000, stats
    # the first few logged, then only counted: a flood cannot fill a terminal
    logged = [r.getMessage() for r in caplog.records if r.name == "dpnet.engines.group"]
    assert len(logged) == 4 and logged[-1].startswith("dropping more messages")
    assert "dpnet: dropped 8000 messages" in capfd.readouterr().err


def test_a_flood_changes_nothing_in_an_lstm_run():
    text = "to be or not to be, that is the question. " * 80
    vocab = Vocabulary(text)
    ids = vocab.encode(text)

    def run(engine):
        m = CharLSTM(len(vocab), 24, seed=1, optimizer=SGD(lr=0.5))
        fit_text(m, StreamBatcher(ids[:3000], 4, 16), StreamBatcher(ids[3000:], 2, 16),
                 steps=120, engine=engine, log_every=20, eval_every=40, sample_every=0,
                 verbose=False)
        return m
    with MultiprocessEngine(workers=2) as eng:
        ref = run(eng)
    eng = Flooded(10_000, workers=2, on_failure="abort")
    with eng:
        m = run(eng)
        eng.drain()
        assert eng.stats()["dropped"] == eng.flood.delivered
    assert eng.flood.error is None and eng.flood.sent == 10_000 and eng.respawns == 0
    assert np.array_equal(m.params, ref.params)


class Liar(MultiprocessEngine):
    """A worker of the run whose reply does not match what it was sent."""

    def __init__(self, field, **kw):
        super().__init__(**kw)
        self.field = field

    def _accept(self, got, *args):
        if got.kind == P.GRAD and got.rank == 1:
            got.header[self.field] += 1
        return super()._accept(got, *args)


@pytest.mark.parametrize("field,words", [("n", "answered for 26 samples, its shard has 25"),
                                         ("rank", "claims to be from worker 2")])
def test_a_reply_must_match_what_was_sent(field, words):
    with Liar(field, workers=2) as eng, pytest.raises(WorkerError, match=words):
        mlp_run(eng)
