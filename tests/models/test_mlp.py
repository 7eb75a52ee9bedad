import numpy as np
import pytest

import dpnet
from dpnet import Dense, Dropout, Sequential
from dpnet.optim.optimizers import SGD
from conftest import numeric_grad, rel_error


def three_layer(dtype=np.float64, loss="categorical_crossentropy", out="softmax", acts=None,
                seed=3, **kw):
    acts = acts or ["tanh", "relu"]
    return Sequential([Dense(6, 5, activation=acts[0]), Dense(5, 4, activation=acts[1]),
                       Dense(4, 3, activation=out)], loss=loss, dtype=dtype, seed=seed, **kw)


def data(B=7, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(B, 6)), rng.integers(0, 3, size=B)


@pytest.mark.parametrize("loss,out,acts", [
    ("categorical_crossentropy", "softmax", ["tanh", "relu"]),
    ("categorical_crossentropy", "softmax", ["sigmoid", "lecun_tanh"]),
    ("mse", "softmax", ["leaky_relu", "tanh"]),
    ("mse", "linear", ["relu", "sigmoid"]),
    ("binary_crossentropy", "sigmoid", ["lecun_tanh", "tanh"]),
])
def test_network_gradient_matches_finite_differences(loss, out, acts):
    m = three_layer(loss=loss, out=out, acts=acts)
    x, y = data()
    if loss == "binary_crossentropy":
        y = (np.random.default_rng(5).random((7, 3)) > 0.5).astype(float)
    loss0, n = m.loss_and_grad(x, y)
    assert n == 7
    analytic = m.grads.copy()

    def f():
        return m.loss_and_correct(x, y)[0]

    num = numeric_grad(f, m.params)
    assert rel_error(analytic, num) < 1e-6
    assert loss0 == pytest.approx(f())


def test_dropout_gradient_with_a_fixed_mask():
    m = Sequential([Dense(6, 8, activation="tanh"), Dropout(0.5), Dense(8, 3, activation="softmax")],
                   dtype=np.float64, seed=1)
    x, y = data()

    def f():
        m.seed_step(42, 7)                         # the same mask every evaluation
        return m.loss_and_grad(x, y)[0]

    f()
    analytic = m.grads.copy()
    num = numeric_grad(f, m.params)
    assert rel_error(analytic, num) < 1e-6
    drop = m.layers[1]
    assert 0 < (drop.mask == 0).mean() < 1                     # some units dropped
    assert np.allclose(drop.mask[drop.mask > 0], 2.0)           # survivors scaled 1/(1-p)


def test_dropout_masks_do_not_depend_on_sharding():
    m = Sequential([Dense(6, 50, activation="relu"), Dropout(0.3), Dense(50, 3, activation="softmax")],
                   dtype=np.float64, seed=1)
    x, y = data(B=9)
    m.seed_step(0, 5)
    m.loss_and_grad(x, y)
    full = m.layers[1].mask.copy()
    assert 0.2 < (full == 0).mean() < 0.4
    m.seed_step(0, 5, row0=4)
    m.loss_and_grad(x[4:], y[4:])
    assert np.array_equal(m.layers[1].mask, full[4:])
    m.seed_step(0, 6)
    m.loss_and_grad(x, y)
    assert not np.array_equal(m.layers[1].mask, full)           # a new step, new masks


def test_params_are_one_flat_vector_with_views_in_the_documented_layout():
    m = three_layer()
    assert m.params.ndim == 1 and m.params.flags.c_contiguous
    assert m.n_params == 6 * 5 + 5 + 5 * 4 + 4 + 4 * 3 + 3
    W1, b1 = m.layers[0].W, m.layers[0].b
    assert np.shares_memory(W1, m.params) and np.shares_memory(m.layers[2].dW, m.grads)
    m.params[:] = np.arange(m.n_params)
    assert W1[0, 1] == 1 and W1[1, 0] == 5          # (n_in, n_out), C order
    assert b1[0] == 30 and m.layers[1].W[0, 0] == 35


def test_mean_gradient_contract_shards_average_to_the_full_batch():
    m = three_layer()
    x, y = data(B=10)
    full_loss, _ = m.loss_and_grad(x, y)
    full = m.grads.copy()
    acc, loss_sum, n_sum = np.zeros_like(full), 0.0, 0
    for a, b in [(0, 3), (3, 4), (4, 10)]:          # uneven shards
        loss, n = m.loss_and_grad(x[a:b], y[a:b])
        acc += n * m.grads
        loss_sum += n * loss
        n_sum += n
    assert np.allclose(acc / n_sum, full, rtol=1e-12, atol=1e-15)
    assert loss_sum / n_sum == pytest.approx(full_loss, rel=1e-12)


def test_float32_stays_float32_on_the_hot_path():
    m = Sequential([Dense(784, 32, activation="relu"), Dense(32, 10, activation="softmax")])
    x = np.random.default_rng(0).random((16, 784), dtype=np.float32)
    m.loss_and_grad(x, np.arange(16) % 10)
    assert m.params.dtype == m.grads.dtype == np.float32
    assert m.layers[0].a.dtype == np.float32
    assert m.predict_proba(x).dtype == np.float32


def test_l2_and_clipping_act_on_the_update():
    x, y = data()
    base = three_layer(optimizer=dpnet.optimizers.SGD(lr=0.1))
    l2 = three_layer(optimizer=dpnet.optimizers.SGD(lr=0.1), l2=0.5)
    for m in (base, l2):
        m.loss_and_grad(x, y)
    p0 = base.params.copy()
    g = base.grads.copy()
    base.apply_gradients()
    l2.apply_gradients()
    expect = g.copy()
    for sl in base._weight_slices:                 # l2 * W on weights, nothing on biases
        expect[sl] += 0.5 * p0[sl]
    assert np.allclose(l2.params, p0 - 0.1 * expect)
    # the gradient of the L2 penalty is what apply_gradients adds
    num = numeric_grad(l2.l2_penalty, l2.params)
    mask = np.zeros_like(num)
    for sl in l2._weight_slices:
        mask[sl] = 1
    assert rel_error(num, 0.5 * l2.params * mask) < 1e-6

    clip = three_layer(optimizer=dpnet.optimizers.SGD(lr=1.0), clip_norm=1e-3)
    clip.loss_and_grad(x, y)
    before = clip.params.copy()
    clip.apply_gradients()
    assert np.linalg.norm(clip.params - before) == pytest.approx(1e-3, rel=1e-6)


def test_predict_evaluate_and_labels_as_one_hot():
    m = three_layer()
    x, y = data(B=20)
    p = m.predict_proba(x)
    assert p.shape == (20, 3) and np.allclose(p.sum(axis=1), 1)
    assert (m.predict(x) == p.argmax(axis=1)).all()
    r1 = m.evaluate(x, y, batch_size=7)
    r2 = m.evaluate(x, dpnet.one_hot(y, 3), batch_size=20)
    assert r1["loss"] == pytest.approx(r2["loss"]) and r1["accuracy"] == r2["accuracy"]
    assert r1["accuracy"] == pytest.approx((m.predict(x) == y).mean())


@pytest.mark.parametrize("out, loss", [(2, "categorical_crossentropy"),
                                       (1, "binary_crossentropy")])
def test_predict_and_evaluate_agree_where_the_probabilities_tie(out, loss):
    """Logits 0 and 1e-8 are two classes; their float32 probabilities are both 0.5
    (a sigmoid of 1e-8 is 0.5 too): predict decides on the logits, as evaluate counts."""
    m = Sequential([Dense(2, out, activation="softmax" if out == 2 else "sigmoid")],
                   loss=loss, seed=0)
    m.params[...] = 0
    m.layers[0].b[...] = [0, 1e-8] if out == 2 else [1e-8]
    x, y = np.zeros((3, 2), np.float32), np.ones(3, np.int64)
    p = m.predict_proba(x)
    assert (p[:, 0] == p[:, -1]).all() and (p == 0.5).all()
    assert (m.predict(x) == 1).all() and m.evaluate(x, y)["accuracy"] == 1.0


def test_seed_determines_init_and_initializers_differ():
    a, b, c = three_layer(seed=1), three_layer(seed=1), three_layer(seed=2)
    assert np.array_equal(a.params, b.params) and not np.array_equal(a.params, c.params)
    big = Sequential([Dense(400, 300, activation="relu", init="he_normal"),
                      Dense(300, 10, activation="softmax", init="zeros")])
    W = big.layers[0].W
    assert W.std() == pytest.approx(np.sqrt(2 / 400), rel=0.02)
    assert not big.layers[1].W.any() and not big.layers[0].b.any()
    xav = Sequential([Dense(400, 300, activation="relu"), Dense(300, 2, activation="softmax")]).layers[0].W
    assert np.abs(xav).max() <= np.sqrt(6 / 700) and xav.std() == pytest.approx(
        np.sqrt(2 / 700), rel=0.02)


def test_constructor_errors_name_the_problem():
    with pytest.raises(ValueError, match="do not chain"):
        Sequential([Dense(4, 5), Dense(6, 2, activation="softmax")])
    with pytest.raises(ValueError, match="needs output activation 'softmax'"):
        Sequential([Dense(4, 2, activation="sigmoid")], loss="categorical_crossentropy")
    with pytest.raises(ValueError, match="n_out must be a positive integer, got -1"):
        Dense(3, -1)
    with pytest.raises(ValueError, match="dropout rate"):
        Dropout(1.0)
    with pytest.raises(ValueError, match="dtype must be float32 or float64"):
        Sequential([Dense(2, 2, activation="softmax")], dtype=np.int32)
    m = three_layer()
    with pytest.raises(ValueError, match=r"input must have shape \(n, 6\), got \(3, 5\)"):
        m.predict(np.zeros((3, 5)))


def test_config_round_trips_parameterized_activations_and_custom_init(tmp_path):
    from dpnet.nn.activations import LeakyReLU
    from dpnet.models import model_from_config

    def my_init(rng, out):
        out[...] = 0.01

    m = Sequential([Dense(6, 5, activation=LeakyReLU(0.3), init=my_init),
                    Dense(5, 3, activation="softmax")], dtype=np.float64)
    again = model_from_config(m.config())
    assert again.layers[0].activation.alpha == 0.3
    assert again.config() == m.config()
    m.save(tmp_path / "m.npz")
    loaded = dpnet.load(tmp_path / "m.npz")
    x = np.random.default_rng(0).normal(size=(4, 6))
    assert np.allclose(loaded.predict_proba(x), m.predict_proba(x))


def test_train_on_batch_draws_fresh_dropout_masks():
    m = Sequential([Dense(6, 40, activation="relu"), Dropout(0.5), Dense(40, 3, activation="softmax")])
    x, y = data()
    masks = []
    for _ in range(3):
        m.train_on_batch(x, y)
        masks.append(m.layers[1].mask.copy())
    assert not np.array_equal(masks[0], masks[1]) and not np.array_equal(masks[1], masks[2])
    before = m.params.copy()
    with pytest.raises(ValueError, match="the batch is empty"):
        m.train_on_batch(x[:0], y[:0])
    assert np.array_equal(m.params, before) and m.optimizer.t == 3


def test_a_regression_predicts_values_and_reports_no_accuracy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4)).astype(np.float32)
    y = (x @ np.array([1.0, -2.0, 0.5, 3.0], np.float32) + 0.25)[:, None]
    m = Sequential([Dense(4, 1, activation="linear")], loss="mse",
                   optimizer=SGD(lr=0.05), seed=1)
    h = m.fit(x, y, epochs=30, batch_size=20, validation_data=(x[:50], y[:50]), verbose=0)
    assert sorted(h.history) == ["loss", "lr", "seconds", "val_loss"]
    pred = m.predict(x[:5])
    assert pred.dtype == np.float32 and pred.shape == (5, 1)
    assert np.allclose(pred, y[:5], atol=0.05)             # values, not 0/1 labels
    assert np.array_equal(m(x[:5]), pred)
    r = m.evaluate(x, y)
    assert sorted(r) == ["loss", "n"] and r["loss"] < 1e-3
    from dpnet.training.epochs import format_epoch
    line = format_epoch(1, 2, {"loss": 0.5, "val_loss": 0.4, "lr": 0.1, "seconds": 1.0})
    assert "acc" not in line and "val_loss 0.4000" in line


def test_mse_on_class_labels_still_reports_accuracy():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(120, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0)
    m = Sequential([Dense(6, 3, activation="linear")], loss="mse", seed=2)
    h = m.fit(x, y, epochs=2, batch_size=30, verbose=0)
    assert "accuracy" in h.history and "accuracy" in m.evaluate(x, y)
    assert m.predict(x).shape == (120, 3)                  # mse predicts the outputs


def test_several_sigmoid_outputs_take_labels_or_multi_label_targets():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(300, 5)).astype(np.float32)
    labels = (x[:, 0] > 0).astype(np.int64) * 2 + (x[:, 1] > 0)          # 4 classes
    m = Sequential([Dense(5, 4, activation="sigmoid")], loss="binary_crossentropy",
                   optimizer=SGD(lr=0.5), seed=3)
    m.fit(x, labels, epochs=20, batch_size=30, verbose=0)    # labels -> one-hot targets
    assert m.evaluate(x, labels)["accuracy"] > 0.9
    multi = np.stack([x[:, 0] > 0, x[:, 1] > 0, x[:, 2] > 0], axis=1).astype(np.float32)
    mm = Sequential([Dense(5, 3, activation="sigmoid")], loss="binary_crossentropy",
                    optimizer=SGD(lr=0.5), seed=4)
    mm.fit(x, multi, epochs=20, batch_size=30, verbose=0)
    pred = mm.predict(x)
    assert pred.shape == (300, 3) and set(np.unique(pred)) <= {0, 1}
    exact = float((pred == multi).all(axis=1).mean())
    assert mm.evaluate(x, multi)["accuracy"] == pytest.approx(exact)   # all outputs right


def test_float32_gradients_agree_with_float64():
    """The float32 model is the float64 one to float32 rounding (the maths is the same;
    only the precision differs): relative error ~1e-6, far below what a bug gives."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(32, 20))
    y = rng.integers(0, 4, 32)
    layers = lambda: [Dense(20, 16, activation="tanh"), Dense(16, 8, activation="relu"),   # noqa
                      Dense(8, 4, activation="softmax")]
    m64 = Sequential(layers(), dtype=np.float64, seed=7, l2=1e-3)
    m32 = Sequential(layers(), dtype=np.float32, seed=7, l2=1e-3)
    m32.params[...] = m64.params.astype(np.float32)
    m64.params[...] = m32.params.astype(np.float64)            # the same starting point
    l64, _ = m64.loss_and_grad(x, y)
    l32, _ = m32.loss_and_grad(x.astype(np.float32), y)
    assert l32 == pytest.approx(l64, rel=1e-5)
    big = np.abs(m64.grads) > 1e-4
    assert rel_error(m32.grads[big], m64.grads[big]) < 1e-4


def test_a_copied_or_pickled_model_trains_its_own_weights():
    """copy.deepcopy and pickle copy the flat vector and the layers' views separately:
    the copy's views must be views of its own vector again, or it trains nothing."""
    import copy
    import pickle
    x, y = data(B=40)
    curves = []
    for make in (lambda m: m, copy.deepcopy, lambda m: pickle.loads(pickle.dumps(m))):
        m = make(three_layer(dtype=np.float32))
        assert np.shares_memory(m.layers[0].W, m.params)
        curves.append(m.fit(x, y, epochs=3, batch_size=8, verbose=0).history["loss"])
    assert curves[0] == curves[1] == curves[2] and curves[0][-1] < curves[0][0]
    lstm = dpnet.CharLSTM(12, 6, num_layers=2)
    for twin in (copy.deepcopy(lstm), pickle.loads(pickle.dumps(lstm))):
        assert np.shares_memory(twin.Wy, twin.params) and np.shares_memory(twin.dWy, twin.grads)
        assert np.array_equal(twin.params, lstm.params)


def test_layers_belong_to_one_model_and_params_assigned_are_copied_in():
    layers = [Dense(6, 5, activation="relu"), Dropout(0.1), Dense(5, 3, activation="softmax")]
    m = Sequential(layers)
    with pytest.raises(ValueError, match=r"layer 0 \(Dense\(6, 5.*already belongs to a model"):
        Sequential(layers)
    with pytest.raises(ValueError, match="layer 2 .* already belongs"):
        Sequential([Dense(6, 5), Dense(5, 5), layers[2]], loss="mse")
    d = Dense(4, 4)
    with pytest.raises(ValueError, match="layer 1 .* already belongs"):
        Sequential([d, d], loss="mse")
    Sequential([Dense(6, 5), layers[1], Dense(5, 3)], loss="mse")   # no weights: shared
    import copy
    import gc
    Sequential(copy.deepcopy(layers))                   # copies are free
    Sequential(copy.deepcopy(m).layers)
    shallow = copy.copy(m)                      # shares m's layers: one more owner
    del shallow
    gc.collect()
    with pytest.raises(ValueError, match="already belongs"):
        Sequential(layers)                      # m still lives
    twice = [Dense(6, 5, activation="relu"), Dense(5, 3, activation="softmax")]
    first = Sequential(twice)
    del first                                           # a notebook cell run again
    gc.collect()
    Sequential(twice)
    # assigning params fills the one vector the layers read (it replaced it before)
    before = m.params
    m.params = np.arange(m.n_params)
    assert m.params is before and m.layers[0].W[0, 1] == 1 and m.layers[2].b[-1] == m.n_params - 1
    with pytest.raises(ValueError, match=r"params must have shape \(53,\)"):
        m.params = np.zeros(52)


def test_views_taken_before_a_fit_with_workers_hold_its_result(mnist_small):
    """The engine works on a shared-memory copy of the vector and copies the result back
    INTO the model's own vector: a layer's W taken before fit is the trained W after."""
    m = Sequential([Dense(784, 16, activation="relu"), Dense(16, 10, activation="softmax")])
    W, params = m.layers[0].W, m.params
    start = W.copy()
    m.fit(mnist_small.x_train[:400], mnist_small.y_train[:400], epochs=1, batch_size=100,
          workers=2, verbose=0)
    assert m.params is params and np.shares_memory(W, m.params)
    assert not np.array_equal(W, start)


def test_a_model_pickled_before_params_was_a_property_loads_and_trains():
    m = three_layer(dtype=np.float32)
    state = dict(m.__dict__)
    state["params"] = state.pop("_params").copy()       # the old pickles' layout
    old = Sequential.__new__(Sequential)
    old.__setstate__(state)
    assert np.shares_memory(old.layers[0].W, old.params)
    x, y = data(B=40)
    loss = old.fit(x, y, epochs=3, batch_size=8, verbose=0).history["loss"]
    assert loss[-1] < loss[0]


def test_an_optimizer_serves_one_model():
    """Its step count drives the schedule and its moments are per weight: a second model
    given the same instance started at the end of the first one's schedule."""
    from dpnet.optim.optimizers import Adam
    opt = Adam(lr=1e-2)
    first = Sequential([Dense(6, 3, activation="softmax")], optimizer=opt)
    with pytest.raises(ValueError, match="already belongs to a model .* an optimizer of "
                                         "its own"):
        Sequential([Dense(6, 3, activation="softmax")], optimizer=opt)
    with pytest.raises(ValueError, match="already belongs to a model"):
        dpnet.CharLSTM(5, 4, optimizer=opt)
    Sequential([Dense(6, 3, activation="softmax")], optimizer="adam")   # names: fresh each
    spare = Adam(lr=1e-2)
    with pytest.raises(ValueError, match="l2 must be"):
        Sequential([Dense(6, 3, activation="softmax")], optimizer=spare, l2=-1)
    Sequential([Dense(6, 3, activation="softmax")], optimizer=spare)   # a failure claims none
    import gc
    del first                                  # the model is gone: its optimizer is free
    gc.collect()
    Sequential([Dense(6, 3, activation="softmax")], optimizer=opt)


def test_a_model_joblib_hands_over_as_read_only_memory_maps_predicts_and_trains(tmp_path):
    """joblib (GridSearchCV's processes) memory-maps a pickled model's arrays read-only:
    the vectors, the optimizer's state and its scratch, the layers' work arrays."""
    joblib = pytest.importorskip("joblib")
    x, y = data(B=40)
    m = three_layer(dtype=np.float32)
    m.fit(x, y, epochs=1, batch_size=8, verbose=0)
    m.predict_proba(x)                                   # work arrays allocated
    joblib.dump(m, tmp_path / "m.joblib")
    back = joblib.load(tmp_path / "m.joblib", mmap_mode="r")
    assert np.array_equal(back.predict_proba(x), m.predict_proba(x))
    a = back.fit(x, y, epochs=1, batch_size=8, verbose=0).history["loss"]
    assert a == m.fit(x, y, epochs=1, batch_size=8, verbose=0).history["loss"]


def test_predict_on_the_device_checks_host_input_as_on_the_host(monkeypatch):
    from dpnet import backend
    monkeypatch.setenv("DPNET_DEVICE", "standin")
    sd = backend.device_xp()
    m = three_layer(dtype=np.float32)
    m.rebind(params=sd.asarray(m.params), grads=sd.asarray(m.grads))
    x, _ = data()
    assert m.predict_proba(x).shape == (7, 3)
    for bad in (x.astype(complex), x.astype(str),
                np.array([[np.complex128(1 + 2j)] + [0.0] * 5], dtype=object)):
        with pytest.raises(ValueError, match="must be numbers"):
            m.predict(bad)
