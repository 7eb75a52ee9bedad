"""fit_text: learning, worker-count equivalence, exact mid-epoch resume (also across
engines), the text checkpoint, the engines' stream-state access, and stopping."""
import math
import re
import os
import signal

import numpy as np
import pytest

from dpnet.storage.checkpoint import CheckpointError, read_checkpoint, write_checkpoint
from dpnet.training.text_checkpoint import load_text_checkpoint, save_text_checkpoint
from dpnet.data.text import StreamBatcher, Vocabulary, split
from dpnet.engines import LocalEngine
from dpnet.models.lstm import CharLSTM
from dpnet.optim.optimizers import SGD, Adam
from dpnet.training import TextHistory, fit_text

# fit_text through workers under the same leak check as fit's
pytestmark = pytest.mark.usefixtures("nothing_left")

TEXT = ("the quick brown fox jumps over the lazy dog. " * 40 +
        "pack my box with five dozen liquor jugs! " * 30)
QUIET = {"verbose": False, "eval_every": 0, "sample_every": 0}


def corpus(b=4, t=16):
    vocab = Vocabulary(TEXT)
    tr, va = split(vocab.encode(TEXT), 0.1)
    return vocab, StreamBatcher(tr, b, t), StreamBatcher(va, 2, t)


def model(vocab, hidden=24, lr=1e-2, seed=3, optimizer=None):
    return CharLSTM(len(vocab), hidden, seed=seed, optimizer=optimizer or Adam(lr=lr),
                    clip_norm=5.0)


def sgd_model(vocab):
    """For comparisons across worker counts: gradients summed in another order differ in
    the last float32 bit, and Adam's g / sqrt(v) turns such a difference in a near-zero
    gradient into a whole step of either sign; plain SGD keeps it at rounding level."""
    return model(vocab, optimizer=SGD(lr=0.5))


def unigram_entropy(ids):
    p = np.bincount(ids) / len(ids)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def test_training_goes_well_below_the_unigram_entropy():
    vocab, train, val = corpus()
    m = model(vocab, hidden=32)
    h = fit_text(m, train, val, steps=250, vocab=vocab, **QUIET)
    ent = unigram_entropy(train.streams.reshape(-1))
    assert h.step == 250 and len(h.loss) == 250 and h.steps[-1] == 250
    assert h.loss[0] > 0.8 * ent                       # starts near a uniform-ish guess
    assert h.recent_loss(20) < 0.35 * ent
    assert h.val_steps == [250] and h.val_loss[0] < 0.5 * ent
    assert h.val_bits_per_char[0] == pytest.approx(h.val_loss[0] / math.log(2))
    # bias-corrected: the first smoothed value is the first loss, then a weighted mean
    assert h.smooth_loss[0] == pytest.approx(h.loss[0])
    w = 0.99 ** np.arange(1, -1, -1) * 0.01
    assert h.smooth_loss[1] == pytest.approx((w @ h.loss[:2]) / (1 - 0.99 ** 2))
    assert h.chars == 250 * 4 * 16 and h.mean_chars_per_s > 0


def test_progress_validation_and_samples_are_reported_and_seeded():
    vocab, train, val = corpus()
    outs = []
    for _ in range(2):
        lines = []
        m = model(vocab)
        h = fit_text(m, train, val, steps=40, vocab=vocab, eval_every=20, sample_every=20,
                     sample_length=30, log_every=10, prime="the ", print_fn=lines.append)
        outs.append((lines, h.samples))
    (lines, samples), (_, samples2) = outs
    assert samples == samples2 and [s for s, _ in samples] == [20, 40]
    assert all(t.startswith("the ") and len(t) == 34 for _, t in samples)
    progress = [l for l in lines if l.startswith("step") and "smooth" in l]
    assert len(progress) == 4 and "chars/s" in progress[0]
    assert sum("bits/char" in l for l in lines) == 2  # at 20 and 40 (the end)


@pytest.mark.timeout(60)
def test_worker_count_does_not_change_the_result():
    vocab, train, val = corpus()
    ref = sgd_model(vocab)
    h0 = fit_text(ref, train, val, steps=60, **QUIET)
    m = sgd_model(vocab)
    h2 = fit_text(m, train, val, steps=60, workers=2, **QUIET)
    assert np.allclose(m.params, ref.params, rtol=1e-5, atol=1e-6)
    assert np.allclose(h2.loss, h0.loss, rtol=1e-5)
    assert h2.val_loss[0] == pytest.approx(h0.val_loss[0], rel=1e-5)
    assert h2.engine_stats["workers"] == 2


def straight_and_half(tmp_path, n_steps, half, workers=(0, 0), make=model):
    """(params of n_steps straight, params of half + checkpoint + resume to n_steps)."""
    vocab, train, val = corpus()
    ref = make(vocab)
    href = fit_text(ref, train, val, steps=n_steps, **QUIET)
    ck = tmp_path / "half.npz"
    fit_text(make(vocab), train, val, steps=half, checkpoint=ck, vocab=vocab,
             workers=workers[0], **QUIET)
    c = load_text_checkpoint(ck)
    state, note = c.resume_state(train)
    assert note is None and state is not None and c.step == half
    h = fit_text(c.model, train, val, steps=n_steps, initial_step=c.step, initial_state=state,
                 history=c.history, workers=workers[1], **QUIET)
    return ref, href, c.model, h


def test_resume_mid_epoch_is_exact(tmp_path):
    _, train, _ = corpus()
    n = len(train)                                     # 42 chunks per epoch
    half = n + 13                                      # mid-epoch, odd chunk (state buffer 1)
    ref, href, m, h = straight_and_half(tmp_path, 2 * half, half)
    assert np.array_equal(m.params, ref.params)
    assert h.loss == href.loss and h.smooth_loss == href.smooth_loss and h.step == 2 * half
    # the carried state matters: resuming from zeros instead gives other weights
    vocab, train, val = corpus()
    fit_text(model(vocab), train, val, steps=half, checkpoint=tmp_path / "z.npz", **QUIET)
    c = load_text_checkpoint(tmp_path / "z.npz")
    fit_text(c.model, train, val, steps=2 * half, initial_step=half, **QUIET)
    assert not np.allclose(c.model.params, ref.params, rtol=1e-4)


@pytest.mark.timeout(60)
def test_resume_across_worker_processes(tmp_path):
    _, train, _ = corpus()
    half = len(train) + 12                             # even chunk (state buffer 0)
    ref, _, m, _ = straight_and_half(tmp_path, 2 * half, half, workers=(2, 2), make=sgd_model)
    assert np.allclose(m.params, ref.params, rtol=1e-5, atol=1e-6)


def test_checkpoint_round_trip_holds_vocabulary_optimizer_and_state(tmp_path):
    vocab, train, val = corpus()
    m = model(vocab)
    ck = tmp_path / "ck.npz"
    hist = fit_text(m, train, val, steps=7, checkpoint=ck, vocab=vocab, seed=11, **QUIET)
    c = load_text_checkpoint(ck)
    assert c.vocab == vocab and c.vocab.decode(c.vocab.encode("lazy dog")) == "lazy dog"
    assert np.array_equal(c.model.params, m.params)
    assert c.model.optimizer.t == 7
    for k in ("m", "v"):
        assert np.array_equal(c.model.optimizer.state[k], m.optimizer.state[k])
    assert (c.step, c.seed, c.batch_size, c.seq_len, c.chunks_per_epoch) == (
        7, 11, 4, 16, len(train))
    assert c.history.loss == hist.loss and c.model.clip_norm == 5.0
    # the stored state is the one a hand-written TBPTT loop reaches after 7 chunks
    m2 = model(vocab)
    st = None
    for k in range(7):
        _, _, st = m2.loss_and_grad(*train.batch(k), st)
        m2.apply_gradients()
    assert np.allclose(c.state[0], st[0], atol=1e-6) and np.allclose(c.state[1], st[1], atol=1e-6)
    # a checkpoint at an epoch boundary needs no state
    save_text_checkpoint(tmp_path / "b.npz", m, vocab, train, len(train), 0, TextHistory())
    assert load_text_checkpoint(tmp_path / "b.npz").state is None


def test_resume_state_refuses_another_layout_or_text(tmp_path):
    vocab, train, val = corpus()
    fit_text(model(vocab), train, val, steps=5, checkpoint=tmp_path / "c.npz", **QUIET)
    c = load_text_checkpoint(tmp_path / "c.npz")
    assert c.vocab is None                             # no vocab given: stored as null
    state, note = c.resume_state(StreamBatcher(train.streams.reshape(-1), 2, 16))
    assert state is None and "2 x 16" in note
    other = np.roll(train.streams.reshape(-1), 1)
    state, note = c.resume_state(StreamBatcher(other, 4, 16))
    assert state is None and "differs" in note


def tamper(src, dst, arrays=None, meta=None):
    a, m = read_checkpoint(src)
    a.update(arrays or {})
    for k, v in (meta or {}).items():
        m[k] = v
    m.pop("crc32")
    write_checkpoint(dst, a, m)


def test_bad_text_checkpoints_are_refused_in_one_line(tmp_path):
    vocab, train, val = corpus()
    good = tmp_path / "g.npz"
    fit_text(model(vocab), train, val, steps=3, checkpoint=good, vocab=vocab, **QUIET)
    _, meta = read_checkpoint(good)
    cases = [({"state.h": np.zeros((3, 24), np.float32)}, {}, "state.h"),
             ({"state.c": np.full((4, 24), np.nan, np.float32)}, {}, "state.c"),
             ({}, {"vocabulary": vocab.to_list()[:-1]}, "vocabulary"),
             ({}, {"vocabulary": ["b", "a"]}, "sorted"),
             ({}, {"training": dict(meta["training"], step=-1)}, "step"),
             ({}, {"training": None}, "training")]
    for i, (arrays, m, words) in enumerate(cases):
        bad = tmp_path / f"bad{i}.npz"
        tamper(good, bad, arrays, m)
        with pytest.raises(CheckpointError, match=words) as e:
            load_text_checkpoint(bad)
        assert "\n" not in str(e.value)


def test_sampling_from_a_loaded_checkpoint_is_deterministic(tmp_path):
    vocab, train, val = corpus()
    m = model(vocab)
    fit_text(m, train, val, steps=30, checkpoint=tmp_path / "s.npz", vocab=vocab, **QUIET)
    a = load_text_checkpoint(tmp_path / "s.npz")
    b = load_text_checkpoint(tmp_path / "s.npz")
    prime = list(vocab.encode("the "))
    s1 = a.model.sample(prime, 80, 0.8, seed=5)
    assert s1 == b.model.sample(prime, 80, 0.8, seed=5) == m.sample(prime, 80, 0.8, seed=5)
    assert s1 != a.model.sample(prime, 80, 0.8, seed=6)


def test_engine_stream_state_get_and_set():
    vocab, train, val = corpus()
    m = model(vocab)
    eng = LocalEngine()
    eng.start(m, {"train": train, "val": val})
    rng = np.random.default_rng(0)
    h, c = (rng.normal(size=(4, 24)).astype(np.float32) for _ in range(2))
    eng.set_state(3, (h, c))
    got = eng.get_state(3)
    assert np.array_equal(got[0], h) and np.array_equal(got[1], c)
    got[0][...] = 0                                    # a copy, not a view
    assert np.array_equal(eng.get_state(3)[0], h)
    assert not eng.get_state(0)[0].any()               # chunk 0 starts from zeros
    # chunk 3 really starts from it
    eng.gradient(0, 3)
    _, _, st = model(vocab).loss_and_grad(*train.batch(3), (h, c))
    assert np.allclose(eng.get_state(4)[0], st[0], atol=1e-6)
    with pytest.raises(ValueError, match=r"shape \(4, 24\)"):
        eng.set_state(5, (h[:2], c[:2]))
    eng.close()
    from dpnet import Dense, Sequential
    mlp = Sequential([Dense(3, 2, activation="softmax")], loss="categorical_crossentropy")
    eng = LocalEngine()
    eng.start(mlp, {"train": (np.zeros((4, 3), np.float32), np.zeros(4, np.int64))})
    with pytest.raises(ValueError, match="no state"):
        eng.get_state(1)


def test_callbacks_stop_and_signals_interrupt(tmp_path):
    vocab, train, val = corpus()
    seen = []

    def stop_at_30(step, rec):
        seen.append((step, rec["kind"]))
        return step >= 30

    h = fit_text(model(vocab), train, val, steps=100, log_every=10, callbacks=[stop_at_30],
                 **QUIET)
    assert h.step == 30 and h.stopped_early and not h.interrupted
    assert seen == [(10, "train"), (20, "train"), (30, "train")]
    assert h.val_steps == [30]       # validated at the end, as a run that ran its course

    def sigint_at_5(step, rec):
        if step == 5:
            os.kill(os.getpid(), signal.SIGINT)       # handled after this step
        return False

    ck = tmp_path / "int.npz"
    lines = []
    h = fit_text(model(vocab), train, val, steps=100, log_every=1, callbacks=[sigint_at_5],
                 checkpoint=ck, print_fn=lines.append, eval_every=0, sample_every=0,
                 on_interrupt="return")
    assert h.interrupted and h.step == 5 and h.val_loss == []
    assert any("stopped by SIGINT after step 5" in l for l in lines)
    assert load_text_checkpoint(ck).step == 5
    # by default the Ctrl-C goes on, once the run has stopped and saved
    ck.unlink()
    with pytest.raises(KeyboardInterrupt) as e:
        fit_text(model(vocab), train, val, steps=100, log_every=1, callbacks=[sigint_at_5],
                 checkpoint=ck, eval_every=0, sample_every=0, print_fn=lines.append)
    assert e.value.history.interrupted and e.value.history.step == 5
    assert load_text_checkpoint(ck).step == 5


@pytest.mark.parametrize("kwargs, words", [
    ({"steps": 5, "epochs": 1}, "not both"),
    ({"steps": -1}, "steps"),
    ({"temperature": 0.0}, "temperature"),
    ({"save_every": 0}, "save_every"),
    ({"smoothing": 1.0}, "smoothing"),
])
def test_bad_arguments_are_named(kwargs, words):
    vocab, train, val = corpus()
    with pytest.raises(ValueError, match=words):
        fit_text(model(vocab), train, val, **{**QUIET, **kwargs})


def test_validation_batches_must_match_seq_len():
    vocab, train, _ = corpus()
    with pytest.raises(ValueError, match="8 steps long"):
        fit_text(model(vocab), train, StreamBatcher(vocab.encode(TEXT), 2, 8), **QUIET)


def test_a_corpus_goes_straight_in_and_the_model_keeps_its_vocabulary(tmp_path):
    import dpnet
    from dpnet.data.text import load_corpus
    p = tmp_path / "t.txt"
    p.write_text("the cat sat on the mat. the dog sat on the log. " * 40)
    corpus = load_corpus(p, 0.1)
    m = CharLSTM(len(corpus[0]), 16, seed=0)
    h = fit_text(m, corpus, steps=30, batch_size=4, seq_len=16, eval_every=0,
                 sample_every=0, verbose=False)
    assert h.step == 30 and h.val_loss              # validated on the corpus's held-out part
    text = m.generate("the ", 30, temperature=0.5, seed=1)
    assert isinstance(text, str) and len(text) == 30 and set(text) <= set(corpus[0].chars)
    m.save(tmp_path / "m.npz")
    back = dpnet.load(tmp_path / "m.npz")
    assert back.generate("the ", 30, temperature=0.5, seed=1) == text
    with pytest.raises(ValueError, match="no vocabulary"):
        CharLSTM(5, 4).generate("ab", 3)


def test_a_vocabulary_that_is_not_the_models_is_refused():
    """The ids mean characters of one vocabulary: another one of the model, or one of
    another size than its input, would train it on characters it would decode wrongly."""
    vocab, train, val = corpus()
    m = model(vocab)
    fit_text(m, train, val, steps=2, vocab=vocab, **QUIET)
    assert m.vocab is vocab
    other = Vocabulary.from_list(vocab.chars[1:] + ["~"])     # same size, other characters
    with pytest.raises(ValueError, match="not the model's own vocabulary"):
        fit_text(m, train, val, steps=4, vocab=other, **QUIET)
    with pytest.raises(ValueError, match=rf"vocab has {len(vocab)} characters, the model's "
                                         rf"input and output {len(vocab) + 3}"):
        fit_text(CharLSTM(len(vocab) + 3, 8), train, val, steps=2, vocab=vocab, **QUIET)


def test_seeds_of_text_training_and_sampling_are_checked():
    vocab, train, val = corpus()
    m = model(vocab)
    for bad in (-1, 1.5):
        with pytest.raises(ValueError, match="seed must be a non-negative integer"):
            fit_text(m, train, val, steps=2, seed=bad, **QUIET)
        with pytest.raises(ValueError, match="seed must be a non-negative integer"):
            m.sample([1], 5, seed=bad)
    assert m.sample([1], 5, seed=[3, 4]) == m.sample([1], 5, seed=[3, 4])   # (seed, step)


@pytest.mark.parametrize("engine", ["in-process", "2 workers", "gpu stand-in"])
def test_keras_callbacks_watch_the_validations(engine, tmp_path, monkeypatch):
    """EarlyStopping and ModelCheckpoint (monitor "val_loss") see the validation
    records: the patience counts validations, the best weights come back -- from the
    GPU worker too, whose weights live on its device -- once every callback has seen
    the last validation: the checkpoint after it holds that step's weights."""
    import dpnet
    from dpnet.engines import gpu_engine
    from dpnet.training.callbacks import EarlyStopping, ModelCheckpoint
    vocab, train, val = corpus()
    ref, ref30 = sgd_model(vocab), sgd_model(vocab)
    fit_text(ref, train, val, steps=10, **QUIET)
    fit_text(ref30, train, val, steps=30, **QUIET)
    if engine == "gpu stand-in":
        monkeypatch.setenv("DPNET_DEVICE", "standin")
        kw = {"engine": gpu_engine(0)}
    else:
        kw = {"workers": 2 if engine == "2 workers" else 0}
    # every validation after the first is "no better" by min_delta: stop at the third
    es = EarlyStopping(patience=2, min_delta=10.0)
    every = ModelCheckpoint(str(tmp_path / "m-{step}-{val_loss:.4f}.npz"),
                            save_best_only=False)
    m = sgd_model(vocab)
    ck = tmp_path / "run.npz"        # saved at the stop's step: after the restore
    h = fit_text(m, train, val, steps=100, callbacks=[es, every], log_every=5,
                 checkpoint=ck, save_every=10, vocab=vocab,
                 **{**QUIET, "eval_every": 10}, **kw)
    if "engine" in kw:
        kw["engine"].close()
    assert h.stopped_early and h.step == 30 and h.val_steps == [10, 20, 30]
    assert es.best_epoch == 10 and es.wait == 2
    assert np.allclose(m.params, ref.params, rtol=1e-5, atol=1e-6)
    if engine == "in-process":
        assert np.array_equal(m.params, ref.params)
    assert [p.rsplit("/", 1)[1] for p in every.saved] == \
        [f"m-{s}-{v:.4f}.npz" for s, v in zip(h.val_steps, h.val_loss)]
    assert np.array_equal(dpnet.load(every.saved[0]).params, m.params)
    assert np.array_equal(load_text_checkpoint(ck).model.params, m.params)
    assert np.allclose(dpnet.load(every.saved[2]).params, ref30.params, rtol=1e-5, atol=1e-6)
    assert not np.allclose(ref30.params, ref.params, rtol=1e-5, atol=1e-6)


def test_callbacks_are_checked_before_training():
    from dpnet.training.callbacks import EarlyStopping, ModelCheckpoint
    vocab, train, val = corpus()
    m = model(vocab)
    before = m.params.copy()
    for callbacks, words in [
            (EarlyStopping(), "callbacks must be a list of callbacks, got EarlyStopping"),
            ([1], "callbacks must be callables"),
            ([EarlyStopping(monitor="val_accuracy")], "EarlyStopping monitors "
             "'val_accuracy', which this run does not report (it has chars_per_s, loss, "
             "smooth_loss, val_bits_per_char, val_loss)"),
            ([ModelCheckpoint("m-{loss}.npz")], "names loss, which the records it sees "
             "(those with 'val_loss') do not hold"),
            ([ModelCheckpoint("m-{step}.npz", save_best_only=False, monitor="loss"),
              ModelCheckpoint("m-{nope}.npz", monitor="loss")], "names nope")]:
        with pytest.raises(ValueError, match=re.escape(words)):
            fit_text(m, train, val, steps=5, callbacks=callbacks, **QUIET)
    with pytest.raises(ValueError, match=re.escape("monitors 'val_loss', which this run does "
                                                   "not report (it has chars_per_s, loss, "
                                                   "smooth_loss; give validation text")):
        fit_text(m, train, None, steps=5, callbacks=[EarlyStopping()], **QUIET)
    assert np.array_equal(m.params, before)


def test_a_diverged_text_run_puts_its_checkpoint_back(tmp_path, capfd):
    """Saved every step: the step whose weights the smoothed-loss rule finds run away
    was written; the file goes back to the one before it."""
    from dpnet.training.loop import Diverged
    vocab, train, val = corpus()
    ck = tmp_path / "t.npz"
    fit_text(sgd_model(vocab), train, val, steps=3, checkpoint=ck, vocab=vocab, **QUIET)
    c = load_text_checkpoint(ck)
    good = ck.read_bytes()
    m = model(vocab, optimizer=SGD(lr=1e30))
    m.params[...] = c.model.params
    m.clip_norm = None
    with pytest.raises(Diverged), np.errstate(all="ignore"):
        fit_text(m, train, val, steps=20, checkpoint=ck, save_every=1, initial_step=3,
                 initial_state=c.resume_state(train)[0], vocab=vocab, **QUIET)
    err = capfd.readouterr().err
    # step 3's update blew the weights up; step 4's file holds them, its loss is nan
    assert f"dpnet: note: {ck} held the weights of step 4, which diverged: put back to " \
        f"the checkpoint it replaced\n" in err, err
    assert ck.read_bytes() == good and load_text_checkpoint(ck).step == 3
    # the last step's update blew them up: the validation at the end says so before
    # the final checkpoint is written (it saved them, and exited 0)
    m.params[...] = c.model.params
    with pytest.raises(Diverged, match="the validation loss .* nats/char at step 4 is "), \
            np.errstate(all="ignore"):
        fit_text(m, train, val, steps=4, checkpoint=ck, initial_step=3, vocab=vocab,
                 initial_state=c.resume_state(train)[0], **QUIET)
    assert ck.read_bytes() == good
