"""dpnet.sklearn: scikit-learn's own estimator checks (all pass but the three that
scikit-learn itself skips here, named below), and each
parameter and attribute seen to do what scikit-learn's MLP does with it -- labels of
any type, partial_fit, every solver, batch fractions, stopping rules, early stopping,
random states, warm starts, callbacks, Ctrl-C, worker processes, Pipeline and
GridSearchCV without leftovers."""
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")

from sklearn.base import clone  # noqa: E402
from sklearn.datasets import load_iris, make_regression  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import check_estimator  # noqa: E402

from dpnet.optim.optimizers import OPTIMIZERS  # noqa: E402
from dpnet.sklearn import MLPClassifier, MLPRegressor  # noqa: E402
from conftest import ROOT, run_leftovers  # noqa: E402

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(autouse=True)
def quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        yield


@pytest.fixture(scope="module")
def iris():
    X, y = load_iris(return_X_y=True)
    return StandardScaler().fit_transform(X), y


# what scikit-learn itself skips here, and why (dpnet.sklearn's docstring says the same)
SKIPPED_BY_SKLEARN = {
    "check_array_api_input": "SCIPY_ARRAY_API is not set",
    "check_classifier_data_not_an_array": "pandas is not installed",
    "check_regressor_data_not_an_array": "pandas is not installed",
    "check_sample_weights_pandas_series": "pandas is not installed",
}


# as for scikit-learn's own MLP: a sample of weight 2 is that sample twice only where
# there are no minibatches to deal them into (run with lbfgs/cg below)
MINIBATCH_ONLY = {"check_sample_weight_equivalence_on_dense_data":
                  "minibatches differ when samples are repeated"}


@pytest.mark.parametrize("cls", [MLPClassifier, MLPRegressor])
@pytest.mark.parametrize("solver", ["lbfgs", "cg"])
def test_a_weight_is_that_many_copies_with_a_full_batch_solver(cls, solver):
    from sklearn.utils.estimator_checks import check_sample_weight_equivalence_on_dense_data
    check_sample_weight_equivalence_on_dense_data(cls.__name__, cls(solver=solver))


def test_sample_weight_reaches_every_solver_and_is_checked(iris):
    X, y = iris
    w = np.where(y == 2, 3.0, 1.0)
    for solver in ("adam", "lbfgs"):
        def fitted(**kw):
            return MLPClassifier(hidden_layer_sizes=(8,), solver=solver, max_iter=5,
                                 random_state=0).fit(X, y, **kw)
        plain, heavy, ones = fitted(), fitted(sample_weight=w), fitted(sample_weight=w * 0 + 1)
        assert not np.allclose(plain.coef_, heavy.coef_), solver
        # weights of 1 are no weights at all: the same steps, curve and stop
        assert np.array_equal(plain.coef_, ones.coef_), solver
        assert plain.loss_curve_ == pytest.approx(ones.loss_curve_, rel=1e-12), solver
    # lbfgs records the weighted loss: the cross-entropy's weighted average
    p = heavy.predict_proba(X)
    ce = -np.log(p[np.arange(len(y)), y])
    assert heavy.loss_curve_[-1] == pytest.approx(np.average(ce, weights=w), rel=1e-9)
    c = MLPClassifier(max_iter=2, early_stopping=True, random_state=0)
    c.fit(X, y, sample_weight=w)                          # split with the data
    c.partial_fit(X[:20], y[:20], sample_weight=np.ones(20))
    with pytest.raises(ValueError, match="sample_weight"):
        MLPClassifier(max_iter=1).fit(X, y, sample_weight=np.ones(3))
    with pytest.raises(ValueError, match="[Nn]egative"):
        MLPClassifier(max_iter=1).fit(X, y, sample_weight=-np.ones(len(y)))
    with pytest.raises(ValueError, match="[Ss]ample weights must contain|no training sample has a weight"):
        MLPClassifier(max_iter=1).fit(X, y, sample_weight=np.zeros(len(y)))
    # the held-out part is scored with its weights
    from sklearn.model_selection import train_test_split
    wv = np.where(np.arange(len(y)) % 3 == 0, 5.0, 0.5)
    c = MLPClassifier(hidden_layer_sizes=(2,), max_iter=3, early_stopping=True,
                      n_iter_no_change=50, random_state=0).fit(X, y, sample_weight=wv)
    _, Xv, _, yv, _, held = train_test_split(X, y, wv, test_size=0.1, random_state=c._seed_,
                                             stratify=y)
    right = c.predict(Xv) == yv                           # the best iteration's weights
    assert c.best_validation_score_ == pytest.approx(np.average(right, weights=held))


@pytest.mark.parametrize("est", [MLPClassifier(random_state=0), MLPRegressor(random_state=0)],
                         ids=["classifier", "regressor"])
def test_scikit_learns_estimator_checks_all_pass(est):
    results = check_estimator(est, on_fail=None, expected_failed_checks=MINIBATCH_ONLY)
    failed = [(r["check_name"], repr(r["exception"])[:300]) for r in results
              if r["status"] == "failed"]
    assert failed == []
    assert [r["check_name"] for r in results if r["status"] == "xfail"] == list(MINIBATCH_ONLY)
    for r in results:
        if r["status"] == "skipped":
            assert r["check_name"] in SKIPPED_BY_SKLEARN, r
            assert SKIPPED_BY_SKLEARN[r["check_name"]] in str(r["exception"]), r
    assert sum(r["status"] == "passed" for r in results) > 40


def test_labels_of_any_type(iris):
    X, y = iris
    for labels in (np.array(["setosa", "versicolor", "virginica"])[y], y - 5,
                   np.array([-7, 0, 30])[y]):
        c = MLPClassifier(hidden_layer_sizes=(16,), learning_rate_init=0.01, batch_size=16,
                          max_iter=30, random_state=0).fit(X, labels)
        assert list(c.classes_) == sorted(set(labels.tolist()))
        pred = c.predict(X)
        assert pred.dtype == labels.dtype and set(pred) <= set(labels)
        assert c.score(X, labels) > 0.9
        p = c.predict_proba(X)
        assert p.shape == (150, 3) and np.allclose(p.sum(axis=1), 1)


def test_partial_fit_needs_the_classes_first_and_then_learns(iris):
    X, y = iris
    c = MLPClassifier(hidden_layer_sizes=(16,), learning_rate_init=0.01, batch_size=16,
                      random_state=0)
    with pytest.raises(ValueError, match="classes must be given on the first call"):
        c.partial_fit(X[:50], y[:50])
    c.partial_fit(X[:50], y[:50], classes=[0, 1, 2])
    losses = [c.loss_curve_[-1]]
    for _ in range(20):
        c.partial_fit(X, y)
        losses.append(c.loss_curve_[-1])
    assert c.n_iter_ == 21 and len(c.loss_curve_) == 21
    assert losses[-1] < 0.5 * losses[0]
    with pytest.raises(ValueError, match=r"classes \[7\] not in classes_"):
        c.partial_fit(X[:3], np.array([7, 0, 1]))


@pytest.mark.parametrize("solver", list(OPTIMIZERS) + ["lbfgs", "cg"])
def test_every_solver_trains(iris, solver):
    X, y = iris
    lr = {"sgd": 0.1, "momentum": 0.05, "nesterov": 0.05, "adagrad": 0.1}.get(solver, 0.01)
    c = MLPClassifier(hidden_layer_sizes=(16,), solver=solver, learning_rate_init=lr,
                      batch_size=32, max_iter=40, random_state=0).fit(X, y)
    assert c.loss_curve_[-1] < 0.6 * c.loss_curve_[0], (solver, c.loss_curve_[:3])
    assert c.n_iter_ == len(c.loss_curve_) <= 40
    assert c.score(X, y) > 0.85


def test_batch_size_auto_an_int_or_a_fraction(iris):
    X, y = iris
    for batch, steps in (("auto", 1), (32, 5), (0.25, 4), (1.0, 1)):
        c = MLPClassifier(hidden_layer_sizes=(4,), batch_size=batch, max_iter=3,
                          random_state=0).fit(X, y)
        assert c.model_.optimizer.t == 3 * steps, batch
    with pytest.raises(ValueError, match="batch_size must be 'auto', a positive integer or "
                                         "a fraction in"):
        MLPClassifier(batch_size=1.5, max_iter=1).fit(X, y)
    with pytest.raises(ValueError, match="callback must be callable as callback"):
        MLPClassifier(callback=5, max_iter=1).fit(X, y)        # before any training


def test_tol_and_n_iter_no_change_stop_a_run_that_stopped_improving(iris):
    X, y = iris
    c = MLPClassifier(hidden_layer_sizes=(16,), learning_rate_init=0.01, batch_size=16,
                      max_iter=500, tol=0.05, n_iter_no_change=3, random_state=0).fit(X, y)
    assert c.n_iter_ < 500
    curve = np.array(c.loss_curve_)
    # each of the last 3 failed to beat the best before it by tol (scikit-learn's rule)
    for k in range(len(curve) - 3, len(curve)):
        assert curve[k] > curve[:k].min() - 0.05, (k, curve)
    # and the one before them did (else the run would have stopped earlier)
    k = len(curve) - 4
    assert k == 0 or curve[k] <= curve[:k].min() - 0.05
    assert c.best_loss_ == curve.min()


def test_early_stopping_keeps_the_best_held_out_weights(iris):
    X, y = iris
    c = MLPClassifier(hidden_layer_sizes=(16,), learning_rate_init=0.01, batch_size=16,
                      max_iter=200, early_stopping=True, validation_fraction=0.2,
                      n_iter_no_change=5, random_state=0).fit(X, y)
    assert len(c.validation_scores_) == c.n_iter_
    assert c.best_validation_score_ == max(c.validation_scores_) and c.best_loss_ is None
    # the held-out part, as split: the kept weights score exactly the best score on it
    from sklearn.model_selection import train_test_split
    _, Xv, _, yv = train_test_split(X, y, test_size=0.2, random_state=0, stratify=y)
    assert c.score(Xv, yv) == c.best_validation_score_


def test_random_state_int_randomstate_or_generator(iris):
    X, y = iris
    kw = dict(hidden_layer_sizes=(8,), max_iter=5, batch_size=32)

    def coef(rs):
        return MLPClassifier(random_state=rs, **kw).fit(X, y).coef_

    assert np.array_equal(coef(3), coef(3)) and not np.array_equal(coef(3), coef(4))
    assert np.array_equal(coef(np.random.RandomState(1)), coef(np.random.RandomState(1)))
    assert np.array_equal(coef(np.random.default_rng(2)), coef(np.random.default_rng(2)))
    with pytest.raises(ValueError, match="random_state must be None, an int"):
        coef("seven")


def test_warm_start_continues_and_a_cold_start_does_not(iris):
    X, y = iris
    kw = dict(hidden_layer_sizes=(8,), max_iter=5, batch_size=32, random_state=0)
    warm = MLPClassifier(warm_start=True, **kw).fit(X, y)
    after_one = warm.coef_
    warm.fit(X, y)
    assert warm.n_iter_ == 10 and len(warm.loss_curve_) == 10
    assert not np.array_equal(warm.coef_, after_one)              # it went on from there
    # as scikit-learn's: each fit a fresh optimizer, of the solver and rate set now
    assert warm.model_.optimizer.t == 5 * 5                       # 5 epochs of 5 batches
    warm.set_params(learning_rate_init=0.05, solver="sgd")
    warm.fit(X, y)
    assert warm.model_.optimizer.name == "sgd" and warm.model_.optimizer.lr == 0.05
    warm.set_params(hidden_layer_sizes=(9,))
    with pytest.raises(ValueError, match="warm_start: hidden_layer_sizes, activation or "
                                         "the outputs changed"):
        warm.fit(X, y)
    cold = MLPClassifier(**kw).fit(X, y)
    cold.fit(X, y)
    assert cold.n_iter_ == 5 and np.array_equal(cold.coef_, after_one)


def test_early_stopping_across_warm_starts_keeps_the_best_weights_seen(iris):
    """best_validation_score_ carries over a warm start; so do the weights it was
    reached with: a second fit that never beats it ends with them, as scikit-learn's."""
    X, y = iris
    c = MLPClassifier(hidden_layer_sizes=(8,), max_iter=30, early_stopping=True,
                      n_iter_no_change=30, warm_start=True, random_state=0,
                      learning_rate_init=0.01).fit(X, y)
    best, weights = c.best_validation_score_, c.coef_
    c.set_params(learning_rate_init=5.0, max_iter=3)      # a rate that only makes it worse
    c.fit(X, y)
    assert max(c.validation_scores_[-3:]) <= best
    assert c.best_validation_score_ == best and np.array_equal(c.coef_, weights)


def test_coef_coefs_intercepts_and_the_callback(iris):
    X, y = iris
    seen = []

    def cb(i, coef):
        seen.append((i, coef))
        return i == 4                                            # stop after the 4th

    c = MLPClassifier(hidden_layer_sizes=(8, 5), max_iter=50, batch_size=32,
                      random_state=0, callback=cb).fit(X, y)
    assert [i for i, _ in seen] == [1, 2, 3, 4] and c.n_iter_ == 4
    assert np.array_equal(seen[-1][1], c.coef_)
    assert not np.array_equal(seen[0][1], seen[-1][1])
    assert [w.shape for w in c.coefs_] == [(4, 8), (8, 5), (5, 3)]
    assert [b.shape for b in c.intercepts_] == [(8,), (5,), (3,)]
    flat = np.concatenate([a.ravel() for w, b in zip(c.coefs_, c.intercepts_) for a in (w, b)])
    assert np.array_equal(flat, c.coef_)
    coef = c.coef_
    coef[:] = 0                                                  # a copy
    assert np.any(c.coef_ != 0)
    before = c.predict_proba(X)
    c.coefs_[0][...] = 0                                         # views of the model
    assert not np.allclose(c.predict_proba(X), before)


def test_verbose_prints_each_iteration(iris, capsys):
    X, y = iris
    MLPClassifier(hidden_layer_sizes=(4,), max_iter=3, verbose=True, random_state=0).fit(X, y)
    out = capsys.readouterr().out
    assert [line.split(",")[0] for line in out.strip().splitlines()] == \
        ["Iteration 1", "Iteration 2", "Iteration 3"]


def test_worker_processes_give_the_in_process_weights(iris):
    X, y = iris
    kw = dict(hidden_layer_sizes=(16,), max_iter=5, batch_size=30, random_state=0)
    one = MLPClassifier(workers=0, **kw).fit(X, y)
    two = MLPClassifier(workers=2, **kw).fit(X, y)
    np.testing.assert_allclose(two.coef_, one.coef_, rtol=1e-10, atol=1e-12)
    # coefs_ and intercepts_ are the trained weights too (they were the initial ones:
    # the engine gave the model a new vector instead of filling in its own)
    for est in (one, two):
        np.testing.assert_array_equal(np.concatenate(
            [a.ravel() for w_b in zip(est.coefs_, est.intercepts_) for a in w_b]), est.coef_)


def test_a_regressor_with_one_or_several_outputs():
    X, y = make_regression(300, 6, n_targets=2, noise=0.1, random_state=0)
    y = y / y.std(axis=0)
    r = MLPRegressor(hidden_layer_sizes=(32,), learning_rate_init=0.01, batch_size=32,
                     max_iter=100, random_state=0).fit(X, y)
    assert r.predict(X).shape == (300, 2) and r.score(X, y) > 0.95
    r1 = clone(r).fit(X, y[:, 0])
    assert r1.predict(X).shape == (300,) and r1.score(X, y[:, 0]) > 0.95
    r1.set_params(warm_start=True)
    with pytest.raises(ValueError, match="warm_start"):
        r1.fit(X, y)                                  # two outputs now: refused ...
    assert r1.predict(X).shape == (300,)              # ... and nothing changed


CTRL_C = """
import os, signal, sys, warnings
import numpy as np
from sklearn.datasets import load_iris
from dpnet.sklearn import MLPClassifier
X, y = load_iris(return_X_y=True)
start = MLPClassifier(hidden_layer_sizes=(8,), max_iter=1, batch_size=10, random_state=0)
start = start.fit(X, y).coef_
at_3 = []
def cb(i, coef):
    if i == 3:
        at_3.append(coef.copy())
        os.kill(os.getpid(), signal.SIGINT)          # as Ctrl-C in a terminal
c = MLPClassifier(hidden_layer_sizes=(8,), max_iter=100, batch_size=10, random_state=0,
                  callback=cb, solver=sys.argv[1])
try:
    c.fit(X, y)
    raised = False
except KeyboardInterrupt:
    raised = True
print(c.n_iter_, raised, not np.array_equal(c.coef_, start), c.score(X, y) > 0.3,
      np.array_equal(c.coef_, at_3[0]))
"""


@pytest.mark.parametrize("solver", ["adam", "lbfgs"])
def test_ctrl_c_keeps_the_weights_trained_so_far(solver):
    r = subprocess.run([sys.executable, "-c", CTRL_C, solver], capture_output=True,
                       text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    n_iter, raised, moved, sane, kept = r.stdout.split()
    assert int(n_iter) in (3, 4) and raised == moved == sane == "True", r.stdout
    if solver == "lbfgs":      # stopped right after iteration 3: its weights exactly
        assert int(n_iter) == 3 and kept == "True", r.stdout


GRID = """
import json, psutil
from sklearn.datasets import load_iris
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from dpnet.sklearn import MLPClassifier
from conftest import run_leftovers
X, y = load_iris(return_X_y=True)
pipe = make_pipeline(StandardScaler(),
                     MLPClassifier(hidden_layer_sizes=(8,), max_iter=10, batch_size=30,
                                   random_state=0, workers=1))
grid = GridSearchCV(pipe, {"mlpclassifier__learning_rate_init": [1e-3, 1e-2]}, cv=2,
                    n_jobs=2).fit(X, y)
helpers = psutil.Process().children(recursive=True)        # joblib's, kept for reuse
print(json.dumps({
    "best": grid.best_params_["mlpclassifier__learning_rate_init"],
    "score": grid.score(X, y),
    "helpers": [p.pid for p in helpers],
    # (the arguments, not the interpreter's path: a venv may be called dpnet-...)
    "dpnet_children": [p.pid for p in helpers if "dpnet" in " ".join(p.cmdline()[1:])],
    "leftovers": {p.pid: run_leftovers(p.pid) for p in helpers}}))
"""


def test_pipeline_and_grid_search_with_workers_leave_nothing_behind(tmp_path):
    """GridSearchCV(n_jobs=2) runs fits in two joblib processes, each starting and
    stopping its own dpnet worker processes: none is left, nor any shared-memory segment
    or socket, while the search's process lives or after it ends (run in a process of
    its own: joblib keeps its helpers for the life of the process that started them)."""
    import json
    import psutil
    script = tmp_path / "grid.py"
    script.write_text(GRID)
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                       timeout=240, cwd=ROOT,
                       env=dict(os.environ, PYTHONPATH=str(ROOT / "tests")))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["best"] in (1e-3, 1e-2) and 0 <= out["score"] <= 1
    assert out["helpers"], "expected joblib worker processes"
    assert out["dpnet_children"] == [] and all(v == [] for v in out["leftovers"].values())
    gone = psutil.wait_procs([psutil.Process(p) for p in out["helpers"]
                              if psutil.pid_exists(p)], timeout=30)[1]
    assert gone == [] and all(run_leftovers(p) == [] for p in out["helpers"])


def test_importing_dpnet_does_not_import_scikit_learn():
    r = subprocess.run([sys.executable, "-c", "import dpnet, sys; "
                        "print('sklearn' in sys.modules)"], capture_output=True, text=True,
                       timeout=60, cwd=ROOT, env=dict(os.environ))
    assert r.stdout.strip() == "False", r.stderr


def test_alpha_is_scikit_learns_penalty_per_batch(iris):
    """scikit-learn adds (alpha / 2) ||W||^2 to a batch's summed loss: on dpnet's mean
    loss that is alpha / batch size (the whole set for lbfgs/cg)."""
    X, y = iris
    c = MLPClassifier(hidden_layer_sizes=(4,), alpha=0.3, batch_size=30, max_iter=1,
                      random_state=0).fit(X, y)
    assert c.model_.l2 == pytest.approx(0.3 / 30)
    c = MLPClassifier(hidden_layer_sizes=(4,), alpha=0.3, solver="lbfgs", max_iter=2,
                      random_state=0).fit(X, y)
    assert c.model_.l2 == pytest.approx(0.3 / 150)


def test_lbfgs_that_converges_does_not_warn(iris):
    X, y = iris
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        c = MLPClassifier(hidden_layer_sizes=(8,), solver="lbfgs", max_iter=500, tol=1e-2,
                          random_state=0).fit(X, y)
    assert c.n_iter_ < 500
    assert not [x for x in w if issubclass(x.category, ConvergenceWarning)]


def test_cg_ending_on_float32_precision_loss_does_not_warn(iris):
    """scipy's cg often ends on "precision loss" near a minimum in float32: no failure."""
    X, y = iris
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        c = MLPClassifier(hidden_layer_sizes=(8,), solver="cg", max_iter=500,
                          random_state=0).fit(X, y)
    assert c.n_iter_ < 500 and c.score(X, y) > 0.9
    assert not [x for x in w if issubclass(x.category, ConvergenceWarning)], \
        [str(x.message) for x in w]


def test_lbfgs_that_cannot_go_on_warns(iris):
    """scipy ending on an abnormal line search (a target of 1e20: float32 losses past
    its range) is no convergence: warned as scikit-learn's own MLP does."""
    X, y = iris
    with pytest.warns(ConvergenceWarning, match=r"lbfgs failed to converge after 0 "
                      r"iterations \(scipy: ABNORMAL.*\); scaling the data"):
        MLPRegressor(solver="lbfgs", max_iter=50, random_state=0).fit(X, y * 1e20)


def test_a_warm_start_with_other_features_is_refused_and_changes_nothing(iris):
    X, y = iris
    c = MLPClassifier(hidden_layer_sizes=(4,), max_iter=2, warm_start=True,
                      random_state=0).fit(X, y)
    before = c.coef_
    with pytest.raises(ValueError, match="features"):
        c.fit(np.hstack([X, X[:, :2]]), y)
    assert c.n_features_in_ == 4 and np.array_equal(c.coef_, before)
    assert c.predict(X).shape == (150,)
