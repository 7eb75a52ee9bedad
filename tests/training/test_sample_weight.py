"""fit(sample_weight=..., class_weight=...), as Keras users know them: a step's loss is
the mean of weight x loss over its batch. Each loss's weighted value and gradient
against finite differences; weights of one change nothing; class weights are the
per-sample weights they name; every engine gives the in-process engine's weights."""
import numpy as np
import pytest

from conftest import numeric_grad, rel_error
from dpnet import Dense, Sequential
from dpnet.engines.coordinator import MultiprocessEngine
from dpnet.nn.losses import LOSSES
from dpnet.optim.optimizers import SGD

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("name", ["mse", "binary_crossentropy", "categorical_crossentropy"])
@pytest.mark.parametrize("labels", ["int", "dense"])
def test_weighted_loss_value_and_gradient(name, labels):
    rng = np.random.default_rng(0)
    B, K = 6, 4
    z = rng.normal(size=(B, K))
    if labels == "int":
        y = rng.integers(0, K, B)
    elif name == "categorical_crossentropy":
        y = rng.dirichlet(np.ones(K), B)
    else:
        y = rng.uniform(size=(B, K))
    w = np.array([0.0, 1.0, 2.5, 0.5, 1.0, 3.0])
    loss = LOSSES[name]()
    value, grad = loss.value_and_grad(z.copy(), y, w)
    # the value: the mean over the batch of w_i times sample i's own loss
    per = [loss.value(z[i:i + 1].copy(), y[i:i + 1]) for i in range(B)]
    assert value == pytest.approx(float(np.mean(w * per)), rel=1e-12)
    num = numeric_grad(lambda: loss.value_and_grad(z.copy(), y, w)[0], z)
    assert rel_error(grad, num) < 1e-6
    # weights of one are no weights at all, to the bit
    v1, g1 = loss.value_and_grad(z.copy(), y, np.ones(B))
    v0, g0 = loss.value_and_grad(z.copy(), y)
    assert v1 == v0 and np.array_equal(g1, g0)


def data():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 10)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0.3).astype(np.int64) + (x[:, 2] > 1).astype(np.int64)
    return x, y


def model():
    return Sequential([Dense(10, 16, activation="tanh"), Dense(16, 3, activation="softmax")],
                      optimizer=SGD(lr=0.1), seed=2)


def fitted(**kw):
    x, y = data()
    m = model()
    h = m.fit(x, y, epochs=3, batch_size=32, verbose=0, **kw)
    return m, h


def test_class_weight_is_the_sample_weight_it_names_and_changes_the_model():
    x, y = data()
    cw = {0: 1.0, 1: 4.0, 2: 0.5}
    a, ha = fitted(class_weight=cw)
    b, hb = fitted(sample_weight=np.array([cw[int(c)] for c in y]))
    assert np.array_equal(a.params, b.params)
    assert ha.history["loss"] == hb.history["loss"]
    plain, _ = fitted()
    ones, _ = fitted(sample_weight=np.ones(len(y)))
    assert np.array_equal(plain.params, ones.params)
    assert not np.allclose(a.params, plain.params)
    # weighting class 1 up makes the model predict it more often
    assert (a.predict(x) == 1).sum() > (plain.predict(x) == 1).sum()
    # both given: they multiply
    both, _ = fitted(class_weight=cw, sample_weight=np.full(len(y), 2.0))
    twice, _ = fitted(sample_weight=2.0 * np.array([cw[int(c)] for c in y]))
    assert np.array_equal(both.params, twice.params)


def test_validation_split_splits_the_weights_too():
    x, y = data()
    w = np.linspace(0.1, 2.0, len(y))
    a, ha = fitted(sample_weight=w, validation_split=0.2)
    cut = len(y) - 60
    b = model()
    hb = b.fit(x[:cut], y[:cut], epochs=3, batch_size=32, verbose=0, sample_weight=w[:cut],
               validation_data=(x[cut:], y[cut:]))
    assert np.array_equal(a.params, b.params)
    assert ha.history["val_loss"] == hb.history["val_loss"]


def test_worker_processes_use_the_weights_as_the_in_process_engine_does():
    x, y = data()
    w = np.random.default_rng(3).uniform(0, 2, len(y))
    ref, href = fitted(sample_weight=w)
    m = model()
    with MultiprocessEngine(workers=2) as eng:
        h = m.fit(x, y, epochs=3, batch_size=32, verbose=0, sample_weight=w, engine=eng)
    np.testing.assert_allclose(m.params, ref.params, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(h.history["loss"], href.history["loss"], rtol=1e-5)


@pytest.mark.parametrize("kw, why", [
    ({"sample_weight": np.ones(7)}, "must be 300 numbers"),
    ({"sample_weight": np.r_[-1.0, np.ones(299)]}, "sample 0 has -1.0"),
    ({"sample_weight": np.r_[np.ones(299), np.nan]}, "finite and >= 0"),
    ({"sample_weight": np.zeros(300)}, "every training sample has weight 0"),
    ({"class_weight": [1, 2]}, "must be a dict"),
    ({"class_weight": {"a": 1.0}}, "keys must be class labels"),
    ({"class_weight": {1: -2.0}}, r"class_weight\[1\] must be a finite number"),
    ({"class_weight": {5: 1.0}}, r"class_weight has class 5, but the model has 3 classes "
                                 r"\(0 to 2\)"),
    ({"class_weight": {-1: 1.0}}, "class_weight has class -1"),
])
def test_bad_weights_are_named(kw, why):
    x, y = data()
    with pytest.raises(ValueError, match=why):
        model().fit(x, y, epochs=1, verbose=0, **kw)


def test_class_weight_needs_class_labels():
    x = np.random.default_rng(0).normal(size=(20, 3)).astype(np.float32)
    m = Sequential([Dense(3, 1, activation="linear")], loss="mse")
    with pytest.raises(ValueError, match="needs integer class labels"):
        m.fit(x, x[:, 0], epochs=1, verbose=0, class_weight={0: 2.0})


def test_the_gpu_worker_and_remote_workers_use_the_weights_too(monkeypatch, no_workers_left):
    """On the stand-in device (CuPy's rules, NumPy underneath) the weights go to the
    device with the data: bit for bit the in-process run; remote workers fetch them
    with the data: bit for bit two local workers."""
    import sys
    from pathlib import Path
    from dpnet.engines import gpu_engine
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engines"))
    from test_remote import remote_engine
    x, y = data()
    w = np.random.default_rng(4).uniform(0, 2, len(y))
    ref, _ = fitted(sample_weight=w)
    monkeypatch.setenv("DPNET_DEVICE", "standin")
    m = model()
    with gpu_engine(0) as eng:
        m.fit(x, y, epochs=3, batch_size=32, verbose=0, sample_weight=w, engine=eng)
    assert np.array_equal(m.params, ref.params)
    with MultiprocessEngine(workers=2) as eng:
        local = model()
        local.fit(x, y, epochs=3, batch_size=32, verbose=0, sample_weight=w, engine=eng)
    eng, launcher = remote_engine(2)
    with eng:
        far = model()
        far.fit(x, y, epochs=3, batch_size=32, verbose=0, sample_weight=w, engine=eng)
    launcher.finish()
    assert np.array_equal(far.params, local.params)
