"""CharLSTM: gradients against finite differences, the engine contract, state carrying,
sampling, and a short training run."""
import json
import math

import numpy as np
import pytest

from dpnet.models import lstm as lstm_mod
from dpnet.optim.optimizers import SGD
from dpnet.models.lstm import CharLSTM

V, H, B, T = 7, 5, 3, 6


def fd_grad(f, x, h=1e-3):
    """Five-point centred differences of scalar f() w.r.t. every entry of x (restored).

    Error O(h^4): with h = 1e-3 truncation and round-off are both ~1e-13, so every
    entry can be held to a relative error of 1e-6 (two-point differences cannot)."""
    out = np.empty_like(x)
    flat, oflat = x.reshape(-1), out.reshape(-1)
    for k in range(flat.size):
        old = flat[k]
        vals = []
        for d in (-2, -1, 1, 2):
            flat[k] = old + d * h
            vals.append(f())
        flat[k] = old
        oflat[k] = (vals[0] - 8 * vals[1] + 8 * vals[2] - vals[3]) / (12 * h)
    return out


def rel_err(a, b):
    den = np.abs(a) + np.abs(b)
    return np.where(den > 0, np.abs(a - b) / np.where(den > 0, den, 1), 0.0)


def model64(seed=1, v=V, hidden=H, layers=1):
    m = CharLSTM(v, hidden, dtype=np.float64, seed=seed, num_layers=layers)
    # Larger-than-init weights so every gate is away from its linear regime.
    m.params[:] = np.random.default_rng(seed).normal(0, 0.5, m.n_params)
    return m


def batch(rng, b=B, t=T, v=V):
    return rng.integers(0, v, (b, t)), rng.integers(0, v, (b, t))


def state(rng, b=B, hidden=H, layers=1):
    shape = (b, layers * hidden)
    return rng.normal(0, 0.5, shape), rng.normal(0, 0.5, shape)


# -- construction ------------------------------------------------------------------------
def test_layout_views_and_init():
    m = CharLSTM(11, 4, seed=3, forget_bias=2.5)
    assert [(n, s) for n, s in m.layout.describe()] == [
        ("Wx", (11, 16)), ("Wh", (4, 16)), ("b", (16,)), ("Wy", (4, 11)), ("by", (11,))]
    assert m.params.dtype == np.float32 and m.params.shape == (m.n_params,)
    for name in ("Wx", "Wh", "b", "Wy", "by"):
        assert np.shares_memory(getattr(m, name), m.params)
        assert np.shares_memory(getattr(m, "d" + name), m.grads)
    assert np.all(m.b[4:8] == 2.5) and np.all(m.b[:4] == 0) and np.all(m.b[8:] == 0)
    assert np.all(m.by == 0) and np.abs(m.Wh).max() > 0
    assert not np.array_equal(CharLSTM(11, 4, seed=4).Wx, m.Wx)          # seed matters
    assert np.array_equal(CharLSTM(11, 4, seed=3).Wx, m.Wx)
    assert np.all(CharLSTM(11, 4, init="zeros").Wh == 0)                  # init matters
    m64 = CharLSTM(11, 4, dtype=np.float64, seed=3)                       # same draws
    np.testing.assert_allclose(m64.Wh, m.Wh, rtol=1e-6)
    cfg = json.loads(json.dumps(m.describe()))
    assert cfg["vocab_size"] == 11 and cfg["hidden_size"] == 4 and cfg["dtype"] == "float32"
    assert cfg["forget_bias"] == 2.5 and cfg["n_params"] == m.n_params
    again = CharLSTM.from_config(m.config())
    assert np.array_equal(again.params, m.params)


def test_stacked_layout_init_and_config():
    m = CharLSTM(11, 4, seed=3, forget_bias=2.5, num_layers=3)
    assert [(n, s) for n, s in m.layout.describe()] == [
        ("Wx", (11, 16)), ("Wh", (4, 16)), ("b", (16,)),
        ("Wx2", (4, 16)), ("Wh2", (4, 16)), ("b2", (16,)),
        ("Wx3", (4, 16)), ("Wh3", (4, 16)), ("b3", (16,)), ("Wy", (4, 11)), ("by", (11,))]
    for b in (m.b, m.b2, m.b3):
        assert np.all(b[4:8] == 2.5) and np.all(b[:4] == 0) and np.all(b[8:] == 0)
    assert np.abs(m.Wx3).max() > 0 and not np.array_equal(m.Wx2, m.Wx3)
    # the first layer draws as a one-layer model of the same seed does
    np.testing.assert_array_equal(m.Wx, CharLSTM(11, 4, seed=3).Wx)
    assert m.state_size == 12 and m.init_state(2)[0].shape == (2, 12)
    again = CharLSTM.from_config(json.loads(json.dumps(m.config())))
    assert again.num_layers == 3 and np.array_equal(again.params, m.params)
    assert "num_layers=3" in repr(m)
    # a config written before stacking existed means one layer
    old = {k: v for k, v in CharLSTM(11, 4).config().items() if k != "num_layers"}
    assert CharLSTM.from_config(old).num_layers == 1


@pytest.mark.parametrize("kwargs, words", [
    (dict(vocab_size=0, hidden_size=4), "vocab_size"),
    (dict(vocab_size=5, hidden_size=-1), "hidden_size"),
    (dict(vocab_size=True, hidden_size=4), "vocab_size"),
    (dict(vocab_size=5, hidden_size=4.0), "hidden_size"),
    (dict(vocab_size=5, hidden_size=4, dtype=np.int32), "dtype"),
    (dict(vocab_size=5, hidden_size=4, forget_bias=float("nan")), "forget_bias"),
    (dict(vocab_size=5, hidden_size=4, clip_norm=0), "clip_norm"),
    (dict(vocab_size=5, hidden_size=4, init="nope"), "initializer"),
    (dict(vocab_size=5, hidden_size=4, num_layers=0), "num_layers"),
])
def test_constructor_rejects(kwargs, words):
    with pytest.raises(ValueError, match=words):
        CharLSTM(**kwargs)


# -- the output's temperature ---------------------------------------------------------
def test_a_temperature_is_the_loss_of_the_scaled_logits_and_its_gradient_matches():
    """softmax(logits / T): the loss of a model with Wy, by scaled by 1/T and T = 1, and
    the gradient against finite differences; T = 1 changes nothing, not even the config."""
    rng = np.random.default_rng(3)
    m = model64()
    x, y = batch(rng)
    s0 = state(rng)
    plain = m.predict_loss(x, y, s0)[0]
    assert "temperature" not in m.config()
    m.temperature = 2.5
    hot = m.predict_loss(x, y, s0)[0]
    scaled = model64()
    for name in ("Wy", "by"):
        scaled.params[scaled.layout.slice_of(name)] /= 2.5
    assert hot == pytest.approx(scaled.predict_loss(x, y, s0)[0], rel=1e-12)
    assert hot != pytest.approx(plain)
    m.loss_and_grad(x, y, s0)
    g = m.grads.copy()
    num = fd_grad(lambda: m.predict_loss(x, y, s0)[0], m.params)
    assert np.linalg.norm(g - num) <= 1e-7 * np.linalg.norm(num)
    back = CharLSTM.from_config(m.config())
    assert back.temperature == 2.5 and m.config()["temperature"] == 2.5
    with pytest.raises(ValueError, match="temperature must be a finite number > 0, got 0"):
        m.temperature = 0


def test_sampling_multiplies_the_models_temperature():
    m = model64()
    m.temperature = 2.0
    twin = model64()
    for name in ("Wy", "by"):
        twin.params[twin.layout.slice_of(name)] /= 2.0
    for t in (0.5, 1.0, 1.7):
        assert m.sample([1, 2], 40, temperature=t, seed=4) == \
            twin.sample([1, 2], 40, temperature=t, seed=4)


# -- gradients ---------------------------------------------------------------------------
@pytest.mark.parametrize("layers", [1, 3])
def test_gradient_matches_finite_differences_every_entry(layers):
    rng = np.random.default_rng(0)
    m = model64(layers=layers)
    x, y = batch(rng)
    h0, c0 = state(rng, layers=layers)
    loss, n, _, (dh0, dc0) = m.loss_and_grad(x, y, (h0, c0), return_state_grad=True)
    assert n == B * T and np.isfinite(loss)
    g = m.grads.copy()

    def f():
        return m.predict_loss(x, y, (h0, c0))[0]

    num = fd_grad(f, m.params)
    for name, _ in m.layout.describe():
        sl = m.layout.slice_of(name)
        # Every entry to 1e-6 relative, except entries so small (deep in a stack,
        # ~1e-8) that the differences' own round-off (~4e-13) dominates: those to
        # 2e-12 absolute, 200x below the smallest gradient checked relatively.
        rel, diff = rel_err(g[sl], num[sl]), np.abs(g[sl] - num[sl])
        bad = (rel >= 1e-6) & (diff >= 2e-12)
        assert not bad.any(), f"{name}: relative error {rel[bad].max():.2e}"
        assert np.linalg.norm(g[sl] - num[sl]) <= 1e-8 * np.linalg.norm(num[sl])
    # Through the carried state: dL/dh0 and dL/dc0.
    assert rel_err(dh0, fd_grad(f, h0)).max() < 1e-6
    assert rel_err(dc0, fd_grad(f, c0)).max() < 1e-6
    assert np.abs(dh0).max() > 1e-3 and np.abs(dc0).max() > 1e-3


@pytest.mark.parametrize("layers", [1, 2])
def test_zero_state_shortcut_equals_explicit_zeros(layers):
    rng = np.random.default_rng(1)
    m = model64(layers=layers)
    x, y = batch(rng)
    l0, _, s0 = m.loss_and_grad(x, y, None)
    g0 = m.grads.copy()
    l1, _, s1 = m.loss_and_grad(x, y, m.init_state(B))
    assert l0 == pytest.approx(l1, rel=1e-14)
    np.testing.assert_allclose(m.grads, g0, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(s0[0], s1[0], rtol=1e-13)
    np.testing.assert_allclose(s0[1], s1[1], rtol=1e-13)


def test_large_vocabulary_scatter_path_agrees(monkeypatch):
    rng = np.random.default_rng(2)
    x, y = batch(rng, v=9)
    st = state(rng)
    m = model64(v=9)
    m.loss_and_grad(x, y, st)
    g_onehot = m.grads.copy()
    monkeypatch.setattr(lstm_mod, "_ONEHOT_SCATTER_MAX_V", 0)   # force add.at
    m2 = model64(v=9)
    m2.loss_and_grad(x, y, st)
    np.testing.assert_allclose(m2.grads, g_onehot, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("layers", [1, 2])
def test_float32_agrees_with_float64(layers):
    rng = np.random.default_rng(3)
    x, y = batch(rng, b=4, t=10)
    m64 = model64(layers=layers)
    m32 = CharLSTM(V, H, dtype=np.float32, num_layers=layers)
    m32.params[:] = m64.params
    l64, _, s64 = m64.loss_and_grad(x, y)
    l32, _, s32 = m32.loss_and_grad(x, y)
    assert m32.grads.dtype == np.float32 and s32[0].dtype == np.float32
    assert l32 == pytest.approx(l64, rel=1e-5)
    np.testing.assert_allclose(m32.grads, m64.grads, atol=2e-6 * np.abs(m64.grads).max())


# -- the engine contract -----------------------------------------------------------------
@pytest.mark.parametrize("layers", [1, 2])
def test_shard_average_equals_full_batch(layers):
    rng = np.random.default_rng(4)
    m = model64(layers=layers)
    x, y = batch(rng, b=6)
    h0, c0 = state(rng, b=6, layers=layers)
    loss, n, (hT, cT) = m.loss_and_grad(x, y, (h0, c0))
    full = m.grads.copy()
    acc, acc_loss, n_tot = np.zeros_like(full), 0.0, 0
    for a, b in ((0, 2), (2, 3), (3, 6)):         # uneven shards of streams (rows)
        ls, ns, (hs, cs) = m.loss_and_grad(x[a:b], y[a:b], (h0[a:b], c0[a:b]))
        assert ns == (b - a) * T
        acc += ns * m.grads
        acc_loss += ns * ls
        n_tot += ns
        np.testing.assert_allclose(hs, hT[a:b], rtol=1e-13, atol=1e-15)
        np.testing.assert_allclose(cs, cT[a:b], rtol=1e-13, atol=1e-15)
    assert n_tot == n
    np.testing.assert_allclose(acc / n_tot, full, rtol=1e-11, atol=1e-15)
    assert acc_loss / n_tot == pytest.approx(loss, rel=1e-13)


@pytest.mark.parametrize("layers", [1, 2])
def test_state_carries_across_chunks(layers):
    """Two chunks with the state carried = one long chunk (loss and final state)."""
    rng = np.random.default_rng(5)
    m = model64(layers=layers)
    x, y = batch(rng, t=2 * T)
    st = state(rng, layers=layers)
    l_all, n_all, s_all = m.predict_loss(x, y, st)
    l1, n1, s1 = m.loss_and_grad(x[:, :T], y[:, :T], st)
    l2, n2, s2 = m.loss_and_grad(x[:, T:], y[:, T:], s1)
    assert (l1 * n1 + l2 * n2) / (n1 + n2) == pytest.approx(l_all, rel=1e-13)
    np.testing.assert_allclose(s2[0], s_all[0], rtol=1e-12)
    np.testing.assert_allclose(s2[1], s_all[1], rtol=1e-12)
    # The returned state is the caller's: later calls do not overwrite it.
    kept = s1[0].copy()
    m.loss_and_grad(x[:, :T], y[:, :T], None)
    assert np.array_equal(s1[0], kept)


def test_predict_loss_and_forward_leave_grads_alone():
    rng = np.random.default_rng(6)
    m = model64()
    x, y = batch(rng)
    loss, _, _ = m.loss_and_grad(x, y)
    g = m.grads.copy()
    assert m.predict_loss(x, y)[0] == pytest.approx(loss, rel=1e-14)
    logits, _ = m.forward(x)
    assert logits.shape == (B, T, V) and np.array_equal(m.grads, g)
    z = logits - logits.max(axis=2, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=2, keepdims=True))
    ce = -np.take_along_axis(logp, y[..., None], axis=2).mean()
    assert ce == pytest.approx(loss, rel=1e-12)


def test_bad_inputs_are_named():
    m = CharLSTM(V, H)
    x = np.zeros((2, 3), np.int64)
    with pytest.raises(ValueError, match="id 7"):
        m.loss_and_grad(x, np.full((2, 3), 7))
    with pytest.raises(ValueError, match="integer"):
        m.loss_and_grad(x.astype(float), x)
    with pytest.raises(ValueError, match="differ in shape"):
        m.loss_and_grad(x, x[:, :2])
    with pytest.raises(ValueError, match=r"\(2, 5\)"):
        m.loss_and_grad(x, x, (np.zeros((3, H)), np.zeros((3, H))))
    with pytest.raises(ValueError, match="params must be"):
        m.bind(np.zeros(3, np.float32))


def test_bind_uses_the_given_vectors():
    m = CharLSTM(V, H, seed=0)
    x, y = batch(np.random.default_rng(7))
    l0 = m.predict_loss(x, y)[0]
    params, grads = m.params.copy(), np.zeros_like(m.grads)
    other = CharLSTM(V, H, seed=9)
    other.bind(params, grads)                      # e.g. views of shared memory
    assert other.predict_loss(x, y)[0] == pytest.approx(l0, rel=1e-6)
    other.loss_and_grad(x, y)
    assert np.abs(grads).max() > 0 and np.shares_memory(other.dWh, grads)


def test_clipping_options():
    x, y = batch(np.random.default_rng(8))
    for kw, check in ((dict(clip_value=1e-4), lambda g: np.abs(g).max() <= 1e-4),
                      (dict(clip_norm=1e-3), lambda g: np.linalg.norm(g) <= 1e-3 * 1.0001)):
        m = CharLSTM(V, H, optimizer=SGD(lr=0.1), **kw)
        m.loss_and_grad(x, y)
        before = m.params.copy()
        m.apply_gradients()
        assert check(m.grads) and not np.array_equal(before, m.params)


# -- sampling ----------------------------------------------------------------------------
def greedy(m, prime, length):
    seq = list(prime)
    for _ in range(length):
        logits, _ = m.forward(np.array([seq]))
        seq.append(int(np.argmax(logits[0, -1])))
    return seq[len(prime):]


def test_sampling_is_seeded_and_validated():
    m = model64()
    a = m.sample([1, 2], 40, temperature=1.0, seed=5)
    assert a == m.sample([1, 2], 40, temperature=1.0, seed=5)
    assert a != m.sample([1, 2], 40, temperature=1.0, seed=6)
    assert len(a) == 40 and all(isinstance(i, int) and 0 <= i < V for i in a)
    shown = []                                     # on_draw sees each id as it comes
    assert m.sample([1, 2], 40, temperature=1.0, seed=5, on_draw=shown.append) == a
    assert shown == a
    for bad in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="temperature"):
            m.sample([1], 5, temperature=bad)
    with pytest.raises(ValueError, match="prime"):
        m.sample([], 5)
    with pytest.raises(ValueError, match="prime"):
        m.sample([V], 5)
    assert m.sample([3], 0) == []


@pytest.mark.parametrize("layers", [1, 2])
def test_low_temperature_is_argmax_and_state_continues(layers):
    m = model64(layers=layers)
    want = greedy(m, [4, 0, 2], 16)
    assert m.sample([4, 0, 2], 16, temperature=1e-6, seed=0) == want
    assert m.sample([4, 0, 2], 16, temperature=1e-6, seed=1) == want
    first, st = m.sample([4, 0, 2], 8, temperature=1e-6, return_state=True)
    rest = m.sample([first[-1]], 8, temperature=1e-6, state=st)
    assert first + rest == want
    hot = [m.sample([4, 0, 2], 16, temperature=5.0, seed=s) for s in range(3)]
    assert any(h != want for h in hot)


# -- learning ----------------------------------------------------------------------------
@pytest.mark.parametrize("layers", [1, 2])
def test_short_training_beats_unigram_entropy(layers):
    from dpnet.data.text import StreamBatcher, Vocabulary
    text = "the cat sat on the mat. " * 40
    vocab = Vocabulary(text)
    ids = vocab.encode(text)
    counts = np.bincount(ids, minlength=len(vocab))
    p = counts[counts > 0] / counts.sum()
    entropy = float(-(p * np.log(p)).sum())          # nats/char, ~2.3 here
    m = CharLSTM(len(vocab), 32, seed=0, num_layers=layers)
    batches = StreamBatcher(ids, batch_size=4, seq_len=16)
    cache = np.zeros_like(m.params)                  # AdaGrad, inline
    losses, st, step = [], None, 0
    while step < 200:
        st = None                                    # reset at each epoch
        for x, y in batches:
            loss, _, st = m.loss_and_grad(x, y, st)
            np.clip(m.grads, -5, 5, out=m.grads)
            cache += m.grads * m.grads
            m.params -= 0.1 * m.grads / (np.sqrt(cache) + 1e-8)
            losses.append(loss)
            step += 1
            if step == 200:
                break
    final = float(np.mean(losses[-20:]))
    assert losses[0] > 0.9 * entropy                 # started near uniform
    assert final < 0.5 * entropy, (final, entropy)
    ev = m.evaluate(batches)
    assert ev["loss"] < 0.5 * entropy and ev["bits_per_char"] == pytest.approx(
        ev["loss"] / math.log(2))
