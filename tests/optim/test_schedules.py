"""Learning-rate schedules: values at the start, middle, end and beyond; configs."""
from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

from dpnet.optim.schedules import (Anneal, Constant, ExponentialDecay, Schedule, StepDecay,
                             as_schedule, schedule_from_config)


def approx(x):
    return pytest.approx(x, rel=1e-12)


def test_constant():
    s = Constant(0.05)
    assert [s(t) for t in (0, 1, 50, 10**6)] == [0.05] * 4


def test_exponential_decay():
    s = ExponentialDecay(0.1, 0.5, 10)
    assert s(0) == 0.1
    assert s(5) == approx(0.1 * math.sqrt(0.5))        # continuous, not staircase
    assert s(10) == approx(0.05)
    assert s(20) == approx(0.025)
    assert s(35) == approx(0.1 * 0.5 ** 3.5)


def test_step_decay():
    s = StepDecay(0.1, 0.5, 3)
    assert [s(t) for t in range(10)] == [approx(v) for v in
                                         [0.1] * 3 + [0.05] * 3 + [0.025] * 3 + [0.0125]]
    assert s(300) == approx(0.1 * 0.5 ** 100)


def test_anneal_geometric():
    s = Anneal(1e-3, 1e-5, 100)
    assert s.kind == "geometric"
    assert s(0) == 1e-3
    assert s(50) == approx(1e-4)
    assert s(25) == approx(10 ** -3.5)
    assert s(100) == approx(1e-5)
    assert s(101) == approx(1e-5)
    assert s(10_000) == approx(1e-5)
    # equal ratios per step
    ratios = [s(t + 1) / s(t) for t in range(100)]
    assert ratios == [approx(0.01 ** 0.01)] * 100


def test_anneal_linear():
    s = Anneal(1e-3, 1e-5, 100, kind="linear")
    assert s(0) == 1e-3
    assert s(50) == approx((1e-3 + 1e-5) / 2)
    assert s(25) == approx(1e-3 - 0.25 * (1e-3 - 1e-5))
    assert s(100) == approx(1e-5)
    assert s(150) == approx(1e-5)
    diffs = [s(t) - s(t + 1) for t in range(100)]
    assert diffs == [pytest.approx((1e-3 - 1e-5) / 100, rel=1e-9)] * 100


def test_anneal_upwards_is_allowed():
    s = Anneal(1e-4, 1e-2, 10)
    assert s(5) == approx(1e-3)
    assert s(20) == approx(1e-2)


def test_numpy_integer_steps():
    s = Anneal(1e-3, 1e-5, 100)
    assert s(np.int64(50)) == approx(1e-4)
    assert StepDecay(0.1, 0.5, 3)(np.int64(4)) == approx(0.05)


ALL = [Constant(0.05), ExponentialDecay(0.1, 0.5, 10), ExponentialDecay(0.1, 0.9, 2.5),
       StepDecay(0.1, 0.5, 3), Anneal(1e-3, 1e-5, 100), Anneal(1e-3, 1e-5, 7, kind="linear")]


@pytest.mark.parametrize("s", ALL, ids=lambda s: type(s).__name__)
def test_config_round_trip(s):
    cfg = json.loads(json.dumps(s.config()))
    again = schedule_from_config(cfg)
    assert type(again) is type(s)
    assert again.config() == s.config()
    for t in (0, 1, 2, 3, 7, 50, 99, 100, 101, 1000):
        assert again(t) == s(t)


def test_schedule_from_config_does_not_consume_its_argument():
    cfg = Anneal(1e-3, 1e-5, 100).config()
    schedule_from_config(cfg)
    assert cfg["type"] == "anneal"


def test_as_schedule():
    s = as_schedule(0.01)
    assert isinstance(s, Constant) and s(123) == 0.01
    a = Anneal(1e-3, 1e-5, 100)
    assert as_schedule(a) is a
    assert isinstance(a, Schedule)


def _raises_naming(value, name=None):
    pat = re.escape(repr(value))
    if name:
        pat = re.escape(name) + ".*" + pat
    return pytest.raises(ValueError, match=pat)


POSITIVE = (0, 0.0, -1e-3, float("nan"), float("inf"), True, "0.1", None)


@pytest.mark.parametrize("v", POSITIVE)
def test_bad_rates_raise(v):
    with _raises_naming(v, "lr"):
        Constant(v)
    with _raises_naming(v, "lr"):
        ExponentialDecay(v, 0.5, 10)
    with _raises_naming(v, "decay_rate"):
        ExponentialDecay(0.1, v, 10)
    with _raises_naming(v, "decay_steps"):
        ExponentialDecay(0.1, 0.5, v)
    with _raises_naming(v, "lr"):
        StepDecay(v, 0.5, 3)
    with _raises_naming(v, "drop"):
        StepDecay(0.1, v, 3)
    with _raises_naming(v, "lr"):
        Anneal(v, 1e-5, 100)
    with _raises_naming(v, "lr_final"):
        Anneal(1e-3, v, 100)


@pytest.mark.parametrize("v", [0, -3, 2.5, 3.0, None, "10", True])
def test_bad_step_counts_raise(v):
    with _raises_naming(v, "every"):
        StepDecay(0.1, 0.5, v)
    with _raises_naming(v, "total_steps"):
        Anneal(1e-3, 1e-5, v)


def test_rates_that_grow_raise_and_name_the_order():
    """Keras's ExponentialDecay(1e-3, 1000, 0.96) is (lr, decay_steps, decay_rate)."""
    with pytest.raises(ValueError, match=re.escape("decay_rate must be in (0, 1], got 1000 "
                                                   "(the arguments are lr, decay_rate, "
                                                   "decay_steps)")):
        ExponentialDecay(1e-3, 1000, 0.96)
    with pytest.raises(ValueError, match=re.escape("drop must be in (0, 1], got 2")):
        StepDecay(0.1, 2, 3)
    assert ExponentialDecay(0.1, 1, 10)(50) == StepDecay(0.1, 1.0, 3)(50) == 0.1


def test_bad_kind_and_type_raise():
    with _raises_naming("cosine", "kind"):
        Anneal(1e-3, 1e-5, 100, kind="cosine")
    with _raises_naming("cosine"):
        schedule_from_config({"type": "cosine", "lr": 0.1})
    with _raises_naming(None):
        schedule_from_config({"lr": 0.1})
    with pytest.raises(ValueError, match="-1"):
        schedule_from_config({"type": "anneal", "lr": 1e-3, "lr_final": 1e-5,
                              "total_steps": -1})
