"""What the library API does with data and arguments a user gets wrong: one ValueError
naming the problem, before any work -- never a silently wrong result."""
import numpy as np
import pytest

import dpnet
from dpnet import Dense, Dropout, Sequential
from dpnet.optim.optimizers import SGD
from dpnet.training import EarlyStopping

rng = np.random.default_rng(0)
X = rng.normal(size=(60, 4)).astype(np.float32)
Y = (X[:, 0] > 0).astype(np.int64) + (X[:, 1] > 0)          # 3 classes


def net(**kw):
    return Sequential([Dense(4, 8, activation="relu"), Dense(8, 3, activation="softmax")],
                      optimizer=SGD(lr=0.1), seed=0, **kw)


@pytest.mark.parametrize("x, y, words", [
    (X, Y + 0.5, "whole numbers"),
    (X, Y - 1, r"labels must be in \[0, 3\)"),
    (X, Y[:1], "60 inputs but 1 targets"),
    (X, np.full(60, np.nan), "NaN or infinite"),
    (np.where(X > 2, np.nan, X), Y, "inputs hold NaN"),
    # finite, but not in float32: the user's data has no NaN, the message says so
    (X.astype(np.float64) * 1e300, Y, r"inputs hold values too large for float32 "
     r"\(largest magnitude .*e\+300\); scale them, or use a float64 model"),
    (X, None, "y is None"),
    (X.reshape(60, 2, 2), Y, r"shape \(n, 4\)"),
    (X, np.array(["a"] * 60), "must be numbers"),
])
def test_bad_data_is_named_by_fit_evaluate_and_train_on_batch(x, y, words):
    for call in (lambda m: m.fit(x, y, epochs=1, verbose=0),
                 lambda m: m.evaluate(x, y),
                 lambda m: m.train_on_batch(x, y)):
        m = net()
        before = m.params.copy()
        with pytest.raises(ValueError, match=words):
            call(m)
        assert np.array_equal(m.params, before)            # nothing was trained


def test_whole_float_labels_and_python_lists_mean_what_they_say():
    a, b, c = net(), net(), net()
    a.fit(X, Y, epochs=2, batch_size=16, verbose=0)
    b.fit(X, Y.astype(np.float64), epochs=2, batch_size=16, verbose=0)
    c.fit(X.tolist(), Y.tolist(), epochs=2, batch_size=16, verbose=0)
    assert np.array_equal(a.params, b.params) and np.array_equal(a.params, c.params)
    assert a.evaluate(X, Y) == b.evaluate(X, Y.astype(np.float32))


def test_binary_crossentropy_targets_must_be_probabilities():
    m = Sequential([Dense(4, 1, activation="sigmoid")], loss="binary_crossentropy")
    with pytest.raises(ValueError, match=r"binary cross-entropy must be in \[0, 1\]"):
        m.fit(X, Y, epochs=1, verbose=0)                     # labels 0..2
    m.fit(X, (Y > 0).astype(np.float32), epochs=1, verbose=0)


def test_validation_data_must_be_a_nonempty_pair():
    m = net()
    with pytest.raises(ValueError, match="validation data is empty"):
        m.fit(X, Y, epochs=1, verbose=0, validation_data=(X[:0], Y[:0]))
    with pytest.raises(ValueError, match=r"\(x, y\) pair, got tuple of 3"):
        m.fit(X, Y, epochs=1, verbose=0, validation_data=(X, Y, None))
    with pytest.raises(ValueError, match=r"\(x, y\) pair, got ndarray"):
        m.fit(X, Y, epochs=1, verbose=0, validation_data=X)


def test_a_reused_early_stopping_starts_afresh():
    es = EarlyStopping(patience=1)
    a = net()
    a.fit(X, Y, epochs=6, verbose=0, validation_data=(X, Y), callbacks=[es])
    b = Sequential([Dense(4, 8, activation="relu"), Dense(8, 3, activation="softmax")],
                   optimizer=SGD(lr=0.1), seed=5)
    h = b.fit(X, Y, epochs=2, verbose=0, validation_data=(X, Y), callbacks=[es])
    assert h.epochs == [1, 2]                                # not stopped by a's record
    assert not np.array_equal(b.params, a.params)            # nor given a's weights


def test_dropout_as_the_first_layer_trains():
    m = Sequential([Dropout(0.2), Dense(4, 3, activation="softmax")], seed=0)
    h = m.fit(X, Y, epochs=3, verbose=0)
    assert len(h.epochs) == 3 and np.isfinite(m.params).all()


def test_numpy_scalars_are_numbers():
    m = Sequential([Dense(np.int64(4), np.int64(3), activation="softmax")],
                   optimizer=SGD(lr=np.float32(0.1)), l2=np.float32(1e-4))
    h = m.fit(X, Y, epochs=np.int64(2), batch_size=np.int64(16), verbose=0)
    assert h.epochs == [1, 2]


def test_inference_arguments_are_checked():
    m = net()
    for bad in (0, -1):
        with pytest.raises(ValueError, match="batch_size must be a positive integer"):
            m.predict(X, batch_size=bad)
        with pytest.raises(ValueError, match="batch_size must be a positive integer"):
            m.evaluate(X, Y, batch_size=bad)
    with pytest.raises(ValueError, match="NaN"):
        m.predict(np.full((2, 4), np.nan))
    from dpnet.training import minimize
    with pytest.raises(ValueError, match="training data is empty"):
        minimize(m, X[:0], Y[:0], maxiter=2)


def test_char_model_with_a_custom_initializer_saves_and_loads(tmp_path):
    def myinit(rng, out):
        out[...] = rng.uniform(-0.1, 0.1, out.shape)
    m = dpnet.CharLSTM(5, 4, init=myinit, num_layers=2)
    m.save(tmp_path / "c.npz")
    back = dpnet.load(tmp_path / "c.npz")
    assert np.array_equal(back.params, m.params) and back.init_name == "myinit"


def test_fit_text_refuses_raw_ids_and_bad_primes_before_training():
    from dpnet.data.text import StreamBatcher, Vocabulary
    from dpnet.training import fit_text
    text = "abcab cabba " * 40
    vocab = Vocabulary(text)
    ids = vocab.encode(text)
    m = dpnet.CharLSTM(len(vocab), 4)
    before = m.params.copy()
    with pytest.raises(ValueError, match="StreamBatcher"):
        fit_text(m, ids, steps=2, verbose=False)
    with pytest.raises(ValueError, match="prime ids"):
        fit_text(m, StreamBatcher(ids, 2, 8), steps=2, vocab=vocab, prime=[99],
                 sample_every=1, verbose=False)
    assert np.array_equal(m.params, before)


def test_metadata_numpy_scalars_nan_states_and_unusable_checkpoint_paths(tmp_path):
    m = net()
    m.save(tmp_path / "m.npz", epoch=np.int64(3), note="x")
    assert dpnet.load(tmp_path / "m.npz").checkpoint_meta["epoch"] == 3
    with pytest.raises(TypeError, match="metadata must be JSON values"):
        m.save(tmp_path / "m2.npz", blob=object())
    lstm = dpnet.CharLSTM(5, 4)
    x = np.zeros((2, 3), np.int64)
    with pytest.raises(ValueError, match="state h holds NaN"):
        lstm.loss_and_grad(x, x, (np.full((2, 4), np.nan), np.zeros((2, 4))))
    with pytest.raises(ValueError, match="not a writable file path"):
        m.fit(X, Y, epochs=1, verbose=0, checkpoint=tmp_path / "no" / "such.npz")


def test_predict_takes_what_fit_takes_and_refuses_what_fit_refuses():
    """An object array of numbers (pandas' nullable columns) is numbers to fit and to
    predict alike; complex or text input is an error to both (predict cut complex down
    to its real part with a warning)."""
    m = net()
    objects = X.astype(object)
    objects[0, 0] = True                                   # a mixed bool/float frame
    m.fit(objects, Y.astype(object), epochs=1, verbose=0)
    as_floats = X.copy()
    as_floats[0, 0] = 1.0
    assert np.array_equal(m.predict_proba(objects), m.predict_proba(as_floats))
    for bad, words in ((X.astype(complex), "must be numbers, got dtype complex128"),
                       (X.astype(str), "must be numbers, got dtype <U"),
                       (np.array([["1", 2, 3, 4]] * 60, dtype=object), "got dtype object")):
        with pytest.raises(ValueError, match=words):
            m.predict(bad)
        with pytest.raises(ValueError, match=words):
            m.fit(bad, Y, epochs=1, verbose=0)


def test_seeds_and_counts_are_checked_and_none_draws_a_recorded_seed():
    def net(seed):
        return Sequential([Dense(4, 8, activation="relu"), Dense(8, 3, activation="softmax")],
                          seed=seed)
    for bad in (-1, 1.7, True, "0"):
        with pytest.raises(ValueError, match=r"seed must be a non-negative integer or None"):
            net(seed=bad)
        with pytest.raises(ValueError, match="seed must be a non-negative integer"):
            dpnet.CharLSTM(5, 4, seed=bad)
    a, b = net(seed=None), net(seed=None)
    assert a.seed != b.seed and a.config()["seed"] == a.seed     # drawn, and recorded
    assert np.array_equal(net(seed=a.seed).params, a.params)     # so it can be repeated
    m = net(0)
    for kw, words in ((dict(seed=-1), "seed must be a non-negative integer, got -1"),
                      (dict(initial_step=-3), "initial_step must be a non-negative integer"),
                      (dict(batch_size=True), "batch_size must be a positive integer")):
        with pytest.raises(ValueError, match=words):
            m.fit(X, Y, epochs=1, verbose=0, **kw)
    m.fit(X, Y, epochs=1, verbose=0, validation_split=np.float32(0.25))   # NumPy's floats too
