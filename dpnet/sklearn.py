"""scikit-learn estimators over dpnet: ``MLPClassifier`` and ``MLPRegressor``.

Their parameters are scikit-learn's own ``MLPClassifier``'s where dpnet has the
same thing (``hidden_layer_sizes``, ``activation``, ``solver``, ``alpha``,
``batch_size``, ``learning_rate_init``, ``max_iter``, ``tol``, ``n_iter_no_change``,
``early_stopping``, ``validation_fraction``, ``random_state``, ``warm_start``,
``verbose``), plus ``workers`` (CPU worker processes; 0 trains in this process),
``callback(i, coef) -> stop?`` after every iteration, and ``solver`` taking every dpnet
optimizer and scipy's ``lbfgs``/``cg`` (full batch; ``max_iter`` is then their
iteration limit). ``batch_size`` may also be a fraction of the training set (the 002
blog's minibatch size). ``fit`` and ``partial_fit`` take ``sample_weight`` as
scikit-learn's do: a sample of weight k counts as k copies of it -- exactly so for
``lbfgs``/``cg`` (the weighted full-batch objective is the repeated data's); the
minibatch solvers weigh each sample's loss in its batch.

An iteration is an epoch (a pass over the data) for the minibatch solvers, as in
scikit-learn. Training stops after ``max_iter`` of them, or when for
``n_iter_no_change`` iterations in a row the training loss (with ``early_stopping``:
the held-out accuracy or R^2) did not improve on the best by ``tol``; with
``early_stopping`` the best iteration's weights are kept. Ctrl-C stops after the
current step (scipy's lbfgs/cg: after the current iteration), leaves the estimator
with the weights trained so far (``coef_`` is current), and then raises
KeyboardInterrupt (SIGTERM ends the process), so that a search or a script does not go
on as if the fit had finished; a second Ctrl-C stops at once.

Fitted attributes: ``coef_`` (a copy of the flat parameter vector), ``coefs_`` and
``intercepts_`` (per-layer views of it, scikit-learn's layout), ``loss_curve_``,
``best_loss_``, ``validation_scores_`` and ``best_validation_score_`` (with
``early_stopping``), ``n_iter_``, ``n_features_in_``, ``classes_`` (classifier),
``model_`` (the dpnet ``Sequential``).

scikit-learn is an optional dependency (``pip install 'dpnet[sklearn]'``); importing
``dpnet`` does not need it. Every check of ``sklearn.utils.estimator_checks`` runs in
the test suite (tests/test_sklearn.py) and passes, except four that scikit-learn itself
skips where their dependencies are missing -- ``check_array_api_input`` (needs
``SCIPY_ARRAY_API=1``; these estimators take NumPy arrays) and
``check_classifier_data_not_an_array`` / ``check_regressor_data_not_an_array`` /
``check_sample_weights_pandas_series`` (need pandas, not a dependency of dpnet) -- and
one expected to fail: ``check_sample_weight_equivalence_on_dense_data``, which, as for
scikit-learn's own MLP, holds for a full-batch solver only (it passes with ``lbfgs``
and ``cg``): repeated samples are dealt into other minibatches. ``partial_fit`` takes
``sample_weight`` third and ``classes`` fourth, as scikit-learn's does.

A fitted estimator pickles (joblib, ``GridSearchCV(n_jobs=...)``, need it); dpnet's own
files never hold pickles -- save the network with ``est.model_.save(path)``.
"""
from __future__ import annotations

import numbers
import warnings

import numpy as np

try:
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.metrics import accuracy_score, r2_score
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import LabelEncoder
    from sklearn.utils.multiclass import check_classification_targets
    from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data
except ImportError as e:                       # pragma: no cover - the extra is missing
    raise ImportError("dpnet.sklearn needs scikit-learn: pip install 'dpnet[sklearn]'") from e

from .models.mlp import Sequential
from .models.loading import without_init
from .nn.layers import Dense
from .optim.optimizers import OPTIMIZERS, get_optimizer
from .training.epochs import fit as fit_epochs
from .training.fullbatch import STOPPED, minimize
from .training.loop import GracefulStop, pass_on

FULL_BATCH = {"lbfgs": "L-BFGS-B", "cg": "CG"}
ACTIVATIONS = {"identity": "linear", "logistic": "sigmoid", "tanh": "tanh", "relu": "relu",
               "lecun_tanh": "lecun_tanh", "leaky_relu": "leaky_relu", "sigmoid": "sigmoid",
               "linear": "linear"}


def _seed(random_state):
    """An int seed from scikit-learn's random_state (None, int, RandomState, Generator)."""
    if random_state is None:
        return int(np.random.default_rng().integers(2**31 - 1))
    if isinstance(random_state, numbers.Integral) and not isinstance(random_state, bool):
        return int(random_state) % (2**31 - 1)
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(2**31 - 1))
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(2**31 - 1))
    raise ValueError(f"random_state must be None, an int, a numpy RandomState or "
                     f"Generator, got {random_state!r}")


class _BaseMLP(BaseEstimator):
    _loss = _out = None

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", solver="adam",
                 alpha=1e-4, batch_size="auto", learning_rate_init=1e-3, max_iter=200,
                 tol=1e-4, n_iter_no_change=10, early_stopping=False,
                 validation_fraction=0.1, random_state=None, warm_start=False,
                 verbose=False, workers=0, callback=None):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate_init = learning_rate_init
        self.max_iter = max_iter
        self.tol = tol
        self.n_iter_no_change = n_iter_no_change
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.random_state = random_state
        self.warm_start = warm_start
        self.verbose = verbose
        self.workers = workers
        self.callback = callback

    # -- checks ----------------------------------------------------------------------
    def _check_params(self):
        sizes = self.hidden_layer_sizes
        sizes = [sizes] if isinstance(sizes, numbers.Integral) else list(sizes)
        if not all(isinstance(s, numbers.Integral) and s > 0 for s in sizes):
            raise ValueError(f"hidden_layer_sizes must be positive integers, got "
                             f"{self.hidden_layer_sizes!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(sorted(ACTIVATIONS))}, "
                             f"got {self.activation!r}")
        if self.solver not in OPTIMIZERS and self.solver not in FULL_BATCH:
            raise ValueError(f"solver must be one of {', '.join(list(OPTIMIZERS) + list(FULL_BATCH))}"
                             f", got {self.solver!r}")
        for name, lo in (("alpha", 0.0), ("tol", 0.0)):
            v = getattr(self, name)
            if not isinstance(v, numbers.Real) or not v >= lo:
                raise ValueError(f"{name} must be a number >= {lo:g}, got {v!r}")
        if not isinstance(self.learning_rate_init, numbers.Real) or not self.learning_rate_init > 0:
            raise ValueError(f"learning_rate_init must be > 0, got {self.learning_rate_init!r}")
        for name in ("max_iter", "n_iter_no_change"):
            v = getattr(self, name)
            if not isinstance(v, numbers.Integral) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if not isinstance(self.validation_fraction, numbers.Real) or \
                not 0 < self.validation_fraction < 1:
            raise ValueError(f"validation_fraction must be in (0, 1), got "
                             f"{self.validation_fraction!r}")
        if not isinstance(self.workers, numbers.Integral) or self.workers < 0:
            raise ValueError(f"workers must be an integer >= 0, got {self.workers!r}")
        if self.callback is not None and not callable(self.callback):
            raise ValueError(f"callback must be callable as callback(iteration, coef) -> "
                             f"stop?, got {self.callback!r}")
        return [int(s) for s in sizes]

    def _batch(self, n):
        b = self.batch_size
        if isinstance(b, str) and b == "auto":
            return min(200, n)
        if isinstance(b, numbers.Integral) and not isinstance(b, bool) and b > 0:
            return min(int(b), n)
        if isinstance(b, numbers.Real) and 0 < b <= 1:         # a fraction of the data
            return max(1, int(round(b * n)))
        raise ValueError(f"batch_size must be 'auto', a positive integer or a fraction in "
                         f"(0, 1], got {b!r}")

    # -- the network -----------------------------------------------------------------
    def _build(self, n_in, n_out, seed):
        sizes = [n_in] + self._check_params()
        act = ACTIVATIONS[self.activation]
        layers = [Dense(a, b, activation=act) for a, b in zip(sizes, sizes[1:])]
        layers.append(Dense(sizes[-1], n_out, activation=self._out))
        return Sequential(layers, loss=self._loss, optimizer=self._new_optimizer(), l2=0.0,
                          dtype=np.float64, seed=seed)

    def _new_optimizer(self):
        if self.solver in FULL_BATCH:
            return get_optimizer("sgd", lr=self.learning_rate_init)     # unused by scipy
        return get_optimizer(self.solver, lr=self.learning_rate_init)

    def _warm_start(self, X, y):
        """A warm-started fit goes on from the fitted weights, with the network they fit
        (a changed hidden_layer_sizes or activation is an error, not ignored) and, as
        scikit-learn's, a fresh optimizer of the current solver and learning rate."""
        fresh = self._build(X.shape[1], self._n_outputs(y), self._seed_)
        if without_init(fresh.config()["layers"]) != \
                without_init(self.model_.config()["layers"]):
            raise ValueError("warm_start: hidden_layer_sizes, activation or the outputs "
                             "changed since the last fit, and the fitted weights are of "
                             "that network; set warm_start=False to start afresh")
        self.model_.optimizer = fresh.optimizer

    def _views(self):
        m = self.model_
        dense = [(i, l) for i, l in enumerate(m.layers) if isinstance(l, Dense)]
        views = m.layout.views(m.params)
        self.coefs_ = [views[f"{i}.W"] for i, _ in dense]
        self.intercepts_ = [views[f"{i}.b"] for i, _ in dense]

    def __setstate__(self, state):
        # the model comes back trainable by itself (Sequential's own __setstate__: its
        # views rebound, joblib's read-only memory maps copied, scratch left behind);
        # coefs_ and intercepts_ must be views of its vector again
        self.__dict__.update(state)
        if self.__dict__.get("model_") is not None:
            self._views()

    @property
    def coef_(self):
        """The flat parameter vector (a copy): every layer's W then b, in order."""
        check_is_fitted(self, "model_")
        return self.model_.params.copy()

    # -- training --------------------------------------------------------------------
    def _fit(self, X, y, incremental=False, sample_weight=None):
        self._check_params()
        if sample_weight is not None:        # scikit-learn's rules: a number, or one >= 0
            sample_weight = _check_sample_weight(sample_weight, X, dtype=np.float64,
                                                 ensure_non_negative=True)
        first = not (hasattr(self, "model_") and (self.warm_start or incremental))
        if first:
            seed = _seed(self.random_state)
            self.model_ = self._build(X.shape[1], self._n_outputs(y), seed)
            self._seed_, self.n_iter_, self.loss_curve_ = seed, 0, []
            self.best_loss_ = np.inf
            self.validation_scores_, self.best_validation_score_ = [], -np.inf
            self._views()
            self._best_params = None
        elif X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} features, but this estimator was fitted "
                             f"with {self.n_features_in_}")
        elif not incremental:
            self._warm_start(X, y)
        self.n_features_in_ = X.shape[1]
        if self.best_loss_ is None:        # after an early-stopping fit: a partial_fit's
            self.best_loss_ = np.inf       # iterations are judged by the training loss
        val = None
        if self.early_stopping and not incremental:
            strat = y if self._loss != "mse" and len(np.unique(y)) > 1 else None
            parts = (X, y) if sample_weight is None else (X, y, sample_weight)
            try:
                split = train_test_split(*parts, test_size=self.validation_fraction,
                                         random_state=self._seed_, stratify=strat)
            except ValueError:
                split = train_test_split(*parts, test_size=self.validation_fraction,
                                         random_state=self._seed_)
            X, Xv, y, yv = split[:4]
            wv = None
            if sample_weight is not None:
                sample_weight, wv = split[4], split[5]
            val = (Xv, yv, wv)                # scored with the held-out samples' weights
        # scikit-learn's alpha: (alpha / 2) * ||W||^2 added to the loss summed over a
        # batch, i.e. alpha / batch size on the mean loss that dpnet's l2 scales
        per = len(X) if self.solver in FULL_BATCH else self._batch(len(X))
        if sample_weight is not None:
            # weights that average 1: a sample of weight k counts as k copies of it, so a
            # full-batch objective is that of the repeated data (scikit-learn's meaning),
            # its size the weights' sum
            top = float(sample_weight.max(initial=0.0))
            if not top > 0:
                raise ValueError("sample_weight: no training sample has a weight above 0"
                                 + (" (after the early-stopping split)"
                                    if self.early_stopping and not incremental else ""))
            total = float((sample_weight / top).sum()) * top       # (no overflow first)
            sample_weight = (sample_weight / top) * (len(X) / (total / top))
            if self.solver in FULL_BATCH:
                per = total
        self.model_.l2 = float(self.alpha) / per
        if self.solver in FULL_BATCH:
            self._fit_full_batch(X, y, 1 if incremental else self.max_iter, val,
                                 sample_weight)
        else:
            self._fit_minibatch(X, y, 1 if incremental else self.max_iter, val,
                                sample_weight)
        return self

    def _after_iteration(self, loss, val, stop_state):
        """Record an iteration; True when training should stop."""
        self.n_iter_ += 1
        self.loss_curve_.append(float(loss))
        if val is not None:
            score = self._score(self._predict_raw(val[0]), val[1], val[2])
            self.validation_scores_.append(score)
            improved = score > self.best_validation_score_ + self.tol
            if score > self.best_validation_score_:
                self.best_validation_score_ = score
                # kept across warm-started fits, as best_validation_score_ is: a fit
                # that never beats an earlier one's best ends with that one's weights
                self._best_params = self.model_.params.copy()
        else:
            improved = loss < self.best_loss_ - self.tol
            self.best_loss_ = min(self.best_loss_, float(loss))
        stop_state["bad"] = 0 if improved else stop_state["bad"] + 1
        if self.verbose:
            print(f"Iteration {self.n_iter_}, loss = {loss:.8f}")
        if self.callback is not None and self.callback(self.n_iter_, self.coef_):
            return True
        return stop_state["bad"] >= self.n_iter_no_change

    def _each(self, val, state, weighted=None):
        """The callback fit and minimize call after every iteration. ``weighted``: (X, y,
        sample_weight), whose weighted mean loss is then the one recorded and judged --
        for scipy's full-batch solvers, whose metrics are the unweighted evaluation (a
        minibatch epoch's loss is its batches' weighted mean already)."""
        def each(i, metrics):
            loss = metrics["loss"] if weighted is None else \
                float(self.model_.loss_and_correct(*weighted)[0])
            stop = self._after_iteration(loss, val, state)
            state["stopped"] |= stop
            return stop
        return each

    def _fit_minibatch(self, X, y, iterations, val, sample_weight):
        state = {"bad": 0, "stopped": False, "validated": val is not None}
        start = self.n_iter_
        hist = fit_epochs(self.model_, X, y, epochs=start + iterations,
                          batch_size=self._batch(len(X)),
                          callbacks=[self._each(val, state)],     # (its loss is weighted)
                          seed=self._seed_, verbose=0, progress=False,
                          workers=int(self.workers), initial_epoch=start, divergence=None,
                          sample_weight=sample_weight, on_interrupt="return")
        self._finish(hist.stop_signal if hist.interrupted else None, state, iterations)

    def _fit_full_batch(self, X, y, iterations, val, sample_weight):
        state = {"bad": 0, "stopped": False, "validated": val is not None}
        with GracefulStop() as stop:
            result = minimize(self.model_, X, y, method=FULL_BATCH[self.solver],
                              maxiter=iterations, workers=int(self.workers),
                              callback=self._each(val, state, None if sample_weight is None
                                                  else (X, y, sample_weight)), stop=stop,
                              sample_weight=sample_weight)
        if result.status != STOPPED and result.nit < iterations:
            # scipy stopped on its own: its tolerances met (convergence), or it could
            # not go on (a line search that failed: a loss that is not finite, say) --
            # warned as scikit-learn's own MLP does
            state["stopped"] = True
            # (scipy's "precision loss" near a minimum, common in float32, is no
            # failure: only a run that could not start, or ended on a loss that is not
            # finite, is warned of)
            ended_badly = result.nit == 0 or not np.isfinite(getattr(result, "fun", 0.0))
            if not result.success and ended_badly:
                why = str(result.message).strip().rstrip(":")
                warnings.warn(f"{self.solver} failed to converge after {result.nit} "
                              f"iterations (scipy: {why}); scaling the data (and a "
                              f"regression's target) may help", ConvergenceWarning)
        self._finish(stop.requested, state, iterations)

    def _finish(self, signal_name, state, iterations):
        """The estimator's state after a run, whatever ended it; a stop signal
        (``signal_name``) then goes on (a Ctrl-C raises KeyboardInterrupt: a search or
        a script must not go on with a half-trained estimator as if nothing happened),
        the estimator holding the whole weights trained so far."""
        best = getattr(self, "_best_params", None)
        if state["validated"] and best is not None:   # early stopping: the best weights
            self.model_.params[...] = best
        if signal_name is None and not state["stopped"] and iterations > 1:
            warnings.warn(f"stopped after max_iter={self.max_iter} iterations without "
                          f"converging", ConvergenceWarning)
        if self.best_loss_ == np.inf:
            self.best_loss_ = min(self.loss_curve_, default=np.inf)
        if self.early_stopping:
            self.best_loss_ = None
        pass_on(signal_name)

    # -- inference -------------------------------------------------------------------
    def _predict_raw(self, X):
        return self.model_.predict_proba(np.asarray(X, dtype=np.float64))

    def _validate(self, X, reset):
        return validate_data(self, X, reset=reset, dtype=np.float64)


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """A fully connected classifier (softmax and cross-entropy) trained by dpnet; see the
    module's docstring for the parameters and attributes."""
    _loss, _out = "categorical_crossentropy", "softmax"

    def _n_outputs(self, y):
        return max(2, len(self.classes_))

    def _score(self, proba, y, sample_weight=None):
        return accuracy_score(y, proba.argmax(axis=1), sample_weight=sample_weight)

    def fit(self, X, y, sample_weight=None):
        warm = self.warm_start and hasattr(self, "model_")
        X, y = validate_data(self, X, y, dtype=np.float64, reset=not warm)
        check_classification_targets(y)
        if not (self.warm_start and hasattr(self, "model_")):
            self._encoder = LabelEncoder().fit(y)
            self.classes_ = self._encoder.classes_
        return self._fit(X, self._encode(y), sample_weight=sample_weight)

    def partial_fit(self, X, y, sample_weight=None, classes=None):
        first = not hasattr(self, "model_")
        X, y = validate_data(self, X, y, dtype=np.float64, reset=first)
        check_classification_targets(y)
        if first:
            if classes is None:
                raise ValueError("classes must be given on the first call to partial_fit")
            self._encoder = LabelEncoder().fit(np.asarray(classes))
            self.classes_ = self._encoder.classes_
        return self._fit(X, self._encode(y), incremental=True, sample_weight=sample_weight)

    def _encode(self, y):
        unseen = np.setdiff1d(np.unique(y), self.classes_)
        if unseen.size:
            raise ValueError(f"y contains classes {unseen.tolist()} not in classes_ "
                             f"{self.classes_.tolist()}")
        return self._encoder.transform(y).astype(np.int64)

    def predict_proba(self, X):
        check_is_fitted(self, "model_")
        p = self._predict_raw(self._validate(X, reset=False))
        if len(self.classes_) == 1:            # one class seen: it is certain
            return np.ones((len(p), 1))
        return p

    def predict_log_proba(self, X):
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))

    def predict(self, X):
        winners = self.predict_proba(X).argmax(axis=1)
        return self.classes_[winners]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = False
        return tags


class MLPRegressor(RegressorMixin, _BaseMLP):
    """A fully connected regressor (linear output, mean squared error) trained by dpnet;
    see the module's docstring for the parameters and attributes."""
    _loss, _out = "mse", "linear"

    def _n_outputs(self, y):
        return y.shape[1]

    def _score(self, pred, y, sample_weight=None):
        return r2_score(y, pred, sample_weight=sample_weight)

    def fit(self, X, y, sample_weight=None):
        warm = self.warm_start and hasattr(self, "model_")
        X, y = validate_data(self, X, y, dtype=np.float64, reset=not warm, multi_output=True,
                             y_numeric=True)
        self._fit(X, y.reshape(len(y), -1), sample_weight=sample_weight)
        self._1d = y.ndim == 1                   # (a fit refused changes nothing)
        return self

    def partial_fit(self, X, y, sample_weight=None):
        first = not hasattr(self, "model_")
        X, y = validate_data(self, X, y, dtype=np.float64, reset=first, multi_output=True,
                             y_numeric=True)
        if first:
            self._1d = y.ndim == 1
        return self._fit(X, y.reshape(len(y), -1), incremental=True,
                         sample_weight=sample_weight)

    def predict(self, X):
        check_is_fitted(self, "model_")
        out = self._predict_raw(self._validate(X, reset=False))
        return out.ravel() if self._1d else out

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags


__all__ = ["MLPClassifier", "MLPRegressor"]
