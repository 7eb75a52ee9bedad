"""Checkpoints written by dpnet 0.1.0 before the layout by layers (tests/fixtures/*_v010.npz,
with what those models computed then) still load, predict the same and train on."""
import numpy as np
import pytest

import dpnet
from dpnet.models import load_weights_into
from dpnet.training.text_checkpoint import load_text_checkpoint
from conftest import ROOT

FIX = ROOT / "tests" / "fixtures"


@pytest.fixture(scope="module")
def expected():
    with np.load(FIX / "expected_v010.npz", allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def test_an_mlp_checkpoint_loads_and_predicts_the_same(expected):
    m = dpnet.load(FIX / "mlp_v010.npz")
    assert isinstance(m, dpnet.Sequential)
    assert m.optimizer.t == int(expected["mlp_t"]) and m.optimizer.name == "adam"
    assert np.array_equal(m.predict_proba(expected["mlp_x"]), expected["mlp_proba"])
    # and into a model built anew with the same architecture
    fresh = dpnet.Sequential([dpnet.Dense(12, 8, activation="relu"), dpnet.Dropout(0.2),
                              dpnet.Dense(8, 4, activation="softmax")], seed=9)
    load_weights_into(fresh, FIX / "mlp_v010.npz")
    assert np.array_equal(fresh.predict_proba(expected["mlp_x"]), expected["mlp_proba"])


def test_an_lstm_checkpoint_loads_and_predicts_the_same(expected):
    m = dpnet.load(FIX / "lstm_v010.npz")
    assert isinstance(m, dpnet.CharLSTM) and m.num_layers == 2
    assert m.optimizer.t == int(expected["lstm_t"])
    ids = expected["lstm_ids"]
    logits, (h, c) = m.forward(ids[:, :-1])
    assert np.array_equal(logits, expected["lstm_logits"])
    assert np.array_equal(h, expected["lstm_h"]) and np.array_equal(c, expected["lstm_c"])
    assert m.sample([1, 2], 20, 0.8, seed=5) == expected["lstm_sample"].tolist()


def test_an_old_model_checkpoint_is_not_taken_for_a_training_position():
    """A plain model.save() carries no training position: the text loader says so."""
    with pytest.raises(dpnet.CheckpointError, match="no training position"):
        load_text_checkpoint(FIX / "lstm_v010.npz")
