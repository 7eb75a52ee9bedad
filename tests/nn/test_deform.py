"""Deformations of training images (dpnet.Deform): the geometry (a one-pixel shift moves
the digit by one pixel, a quarter turn is numpy's rot90), the range of the pixels, the
draws as a pure function of (seed, step, sample's row) whatever the sharding, the
stand-in device, and the layer inside a model and its engines."""
import math

import numpy as np
import pytest

from dpnet import Deform, Dense, Sequential
from dpnet.data import load_mnist
from dpnet.nn.deform import affine_sources, sample_bilinear
from dpnet.nn.rng import mix_key

SHAPE = (28, 28)


@pytest.fixture(scope="module")
def digits():
    d = load_mnist(validation=0, limit_train=256)
    return d.x_train, d.y_train


def params(n, angle=0.0, zoom=1.0, shear=0.0, tx=0.0, ty=0.0):
    full = lambda v: np.full(n, v, dtype=np.float32)        # noqa: E731
    return dict(angle=full(angle), zoom=full(zoom), shear=full(shear), tx=full(tx),
                ty=full(ty))


def warp(x, **p):
    ys, xs = affine_sources(SHAPE, **params(len(x), **p))
    return sample_bilinear(x, SHAPE, ys, xs)


def centre_of_mass(x):
    img = x.reshape(-1, *SHAPE).astype(np.float64)
    r, c = np.arange(SHAPE[0]), np.arange(SHAPE[1])
    m = img.sum(axis=(1, 2))
    return (img.sum(axis=2) @ r) / m, (img.sum(axis=1) @ c) / m


def test_the_identity_map_changes_nothing(digits):
    x, _ = digits
    assert np.array_equal(warp(x), x)


@pytest.mark.parametrize("tx, ty", [(1, 0), (0, 1), (-1, 0), (0, -2), (3, -1)])
def test_a_whole_pixel_shift_moves_the_digit_by_that_many_pixels(digits, tx, ty):
    """Reading each pixel tx to the right means the picture moves tx to the left:
    exactly numpy's shift with zeros coming in, and the centre of mass moves by
    exactly (-ty, -tx)."""
    x, _ = digits
    img = x.reshape(-1, *SHAPE)
    want = np.zeros_like(img)
    src = img[:, max(ty, 0):SHAPE[0] + min(ty, 0), max(tx, 0):SHAPE[1] + min(tx, 0)]
    want[:, max(-ty, 0):max(-ty, 0) + src.shape[1], max(-tx, 0):max(-tx, 0) + src.shape[2]] = src
    got = warp(x, tx=tx, ty=ty)
    assert np.array_equal(got, want.reshape(len(x), -1))
    inside = (img[:, :3].sum(axis=(1, 2)) == 0) & (img[:, -3:].sum(axis=(1, 2)) == 0) & \
        (img[:, :, :3].sum(axis=(1, 2)) == 0) & (img[:, :, -3:].sum(axis=(1, 2)) == 0)
    assert inside.sum() > 100                       # digits clear of the border
    (r0, c0), (r1, c1) = centre_of_mass(x[inside]), centre_of_mass(got[inside])
    np.testing.assert_allclose(r1 - r0, -ty, atol=1e-9)
    np.testing.assert_allclose(c1 - c0, -tx, atol=1e-9)


def test_a_half_pixel_shift_averages_neighbours(digits):
    x, _ = digits
    img = x.reshape(-1, *SHAPE).astype(np.float64)
    got = warp(x, tx=0.5).reshape(-1, *SHAPE)
    want = img.copy()
    want[:, :, :-1] = (img[:, :, :-1] + img[:, :, 1:]) / 2
    want[:, :, -1] = img[:, :, -1] / 2                  # half of it reads the border
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_a_quarter_turn_is_rot90(digits):
    x, _ = digits
    got = warp(x, angle=math.pi / 2).reshape(-1, *SHAPE)
    # the output pixel (r, c) reads the input at (c, W-1-r): numpy's rot90 (a quarter
    # turn of the picture counter-clockwise as shown with row 0 on top)
    want = np.rot90(x.reshape(-1, *SHAPE), k=1, axes=(1, 2))
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_zoom_and_shear_keep_the_centre(digits):
    x, _ = digits
    blob = np.zeros((1, 784), np.float32)
    blob[0, 13 * 28 + 13: 13 * 28 + 15] = 1.0         # rows 13, 14; columns 13, 14:
    blob[0, 14 * 28 + 13: 14 * 28 + 15] = 1.0         # centred on (13.5, 13.5)
    x0 = x[:64]
    for p in (dict(zoom=0.8), dict(zoom=1.2), dict(shear=0.3)):
        r, c = centre_of_mass(warp(blob, **p))
        assert r == pytest.approx(13.5) and c == pytest.approx(13.5), p
        assert not np.allclose(warp(x0, **p), x0), p             # and they do move pixels
    # reading at zoom z spreads the picture by 1/z: its spread about the centre grows for
    # z < 1 (and shrinks for z > 1) by about that factor
    def spread(img):
        img = img.reshape(-1, *SHAPE).astype(np.float64)
        r = np.arange(28) - 13.5
        d2 = r[:, None] ** 2 + r[None, :] ** 2
        return (img * d2).sum(axis=(1, 2)) / img.sum(axis=(1, 2))
    ratio = np.median(spread(warp(x0, zoom=0.8)) / spread(x0))
    assert ratio == pytest.approx(1 / 0.8 ** 2, rel=0.1)


@pytest.mark.parametrize("kind", ["affine", "elastic"])
def test_pixels_stay_in_range_and_the_draws_are_a_function_of_key_and_row(digits, kind):
    x, _ = digits
    layer = Deform(SHAPE, kind=kind)
    key = mix_key(7, 3, 0)
    a = layer.forward(x, key=key, row0=0, training=True)
    assert a.dtype == x.dtype and a.shape == x.shape
    assert a.min() >= 0 and a.max() <= 1
    assert not np.array_equal(a, x)
    assert np.array_equal(layer.forward(x, key=key, row0=0, training=True), a)
    assert not np.array_equal(layer.forward(x, key=key + 1, row0=0, training=True), a)
    # cut into shards as workers would get them: each row deformed as in the whole batch
    parts = [layer.forward(x[s:e], key=key, row0=s, training=True)
             for s, e in ((0, 100), (100, 101), (101, 256))]
    assert np.array_equal(np.concatenate(parts), a)
    # and the row, not the content, picks the draw: the same image at rows 0 and 1
    # is deformed two ways
    two = layer.forward(np.repeat(x[:1], 2, axis=0), key=key, row0=0, training=True)
    assert not np.array_equal(two[0], two[1])
    # inference sees the images as they are
    assert layer.forward(x, training=False) is x


def test_elastic_fields_are_smooth_and_scale_with_alpha():
    n = 64
    still = dict(shift=0, rotate=0, scale=0, shear=0)
    grid = affine_sources(SHAPE, **params(1))

    def field(alpha, sigma=4.0):
        ys, _ = Deform(SHAPE, kind="elastic", alpha=alpha, sigma=sigma, **still).draw(5, 0, n)
        return (ys - grid[0]).reshape(n, *SHAPE)

    f = field(34.0)
    # neighbours move together (a smooth field), far more than for sigma 0.5
    corr = lambda g: np.corrcoef(g[:, :, :-1].ravel(), g[:, :, 1:].ravel())[0, 1]  # noqa: E731
    assert corr(f) > 0.95 and corr(field(34.0, sigma=0.5)) < 0.6
    np.testing.assert_allclose(field(68.0), 2 * f, rtol=1e-5, atol=1e-5)
    assert 0.3 < np.abs(f).mean() < 5                   # a few pixels, not the image
    assert np.array_equal(field(0.0), np.zeros_like(f))


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="kind must be one of affine, elastic, got 'warp'"):
        Deform(kind="warp")
    with pytest.raises(ValueError, match=r"rotate must be a number in \[0, 180\], got 200"):
        Deform(rotate=200)
    with pytest.raises(ValueError, match="image_shape must be"):
        Deform(image_shape=(28,))
    with pytest.raises(ValueError, match="must be the first layer"):
        Sequential([Dense(784, 784), Deform(), Dense(784, 10, activation="softmax")])
    with pytest.raises(ValueError, match="takes rows of 784 pixels"):
        Deform().forward(np.zeros((2, 100), np.float32), key=1, training=True)


def model(deform=True, seed=0):
    layers = [Deform(SHAPE)] if deform else []
    layers += [Dense(784, 32, activation="relu"), Dense(32, 10, activation="softmax")]
    return Sequential(layers, optimizer="adam", seed=seed)


def test_in_a_model_the_gradient_is_that_of_the_deformed_images_with_their_labels(digits):
    """The layer's key is (seed, step, its index): the model's gradient at a step is the
    plain model's gradient on the images deformed with that key, labels unchanged."""
    x, y = digits
    m, plain = model(), model(deform=False)
    assert np.array_equal(m.params, plain.params)
    m.seed_step(3, 11, row0=0)
    loss, _ = m.loss_and_grad(x, y)
    moved = m.layers[0].forward(x, key=mix_key(3, 11, 0), row0=0, training=True)
    want, _ = plain.loss_and_grad(moved, y)
    assert loss == want and np.array_equal(m.grads, plain.grads)
    # and predictions see the images as they are
    np.testing.assert_array_equal(m.predict_proba(x), plain.predict_proba(x))


def test_a_checkpoint_keeps_the_deformation(tmp_path, digits):
    import dpnet
    m = Sequential([Deform(SHAPE, kind="elastic", shift=1, rotate=5, alpha=20, sigma=3),
                    Dense(784, 10, activation="softmax")])
    m.save(tmp_path / "d.npz")
    back = dpnet.load(tmp_path / "d.npz")
    assert back.layers[0].config() == m.layers[0].config()


def test_on_the_stand_in_device_the_deformation_is_the_hosts(digits, monkeypatch):
    """Every formula of the layer runs on device arrays: the stand-in raises on any
    silent trip between host and device."""
    from dpnet import backend
    monkeypatch.setenv("DPNET_DEVICE", "standin")
    xp = backend.device_xp()
    x, _ = digits
    for kind in ("affine", "elastic"):
        layer = Deform(SHAPE, kind=kind)
        host = layer.forward(x, key=99, row0=5, training=True)
        dev = layer.forward(xp.asarray(x), key=99, row0=5, training=True)
        np.testing.assert_allclose(xp.asnumpy(dev), host, rtol=1e-6, atol=1e-6)
