"""The MNIST front end: ``scripts/runDnn.py`` (CPU worker processes),
``scripts/runDnnGPU.py`` (a GPU worker), ``scripts/runDnnDebug.py`` (in process).
Parse, build, train, report."""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np

from ..data import load_mnist
from ..data.mnist import default_mnist_dir
from ..data.table import Table, load_table
from ..engines import gpu_engine, make_engine
from ..engines.errors import WorkerError
from ..models.loading import load_weights_into
from ..models.mlp import Sequential
from ..nn.activations import ACTIVATIONS
from ..nn.deform import Deform
from ..nn.layers import Dense, Dropout
from ..nn.maxout import Maxout
from ..nn.losses import LOSSES
from ..optim.optimizers import OPTIMIZERS, get_optimizer
from ..optim.schedules import Anneal, schedule_from_config
from ..storage.checkpoint import CheckpointError, read_checkpoint, read_checkpoint_meta
from ..training.callbacks import EarlyStopping
from ..training.epochs import fit, save_training_checkpoint
from ..training.fullbatch import STOPPED, minimize, minimize_minibatches
from ..training.history import History, exit_code
from ..training.loop import GracefulStop
from .presets import PRESETS, apply_preset, preset_help
from .common import (Parser, SaveLock, UserError, add_remote_flags, cap_workers,
                     check_model_size, no_remote_flags, remote_engine,
                     check_output_paths, device_line, flag_name, float_in, guarded,
                     json_on_stdout, platform_info,
                     nonneg_int, path_arg, plot_format, positive_int, pyplot,
                     save_figure, write_failure_json, write_json)

EXAMPLE_DNN = """example:
  %(prog)s --hidden 512 128 64 --activation relu --optimizer adam --lr 1e-3 \\
      --lr-final 1e-5 --epochs 20 --batch-size 128 --save mnist.npz --json run.json
  %(prog)s --limit-train 2000 --epochs 1          # a quick smoke run
"""

FULL_BATCH = {"lbfgs": "L-BFGS-B", "cg": "CG"}


def dnn_parser(prog, workers=False, gpu=False):
    p = Parser(prog=prog, description="Train a fully connected network on MNIST"
               + (" on a CUDA GPU." if gpu else "."),
               epilog=EXAMPLE_DNN, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--preset", choices=sorted(PRESETS), default=None, metavar="NAME",
      help="a recipe: its flag values become the defaults (flags given still win) -- "
           + preset_help())
    a("--hidden", type=positive_int, nargs="*", default=[512, 128, 64], metavar="N",
      help="hidden layer sizes (default: 512 128 64; none for softmax regression)")
    a("--activation", nargs="+", default=None, choices=sorted(ACTIVATIONS), metavar="NAME",
      help="hidden activation, one for all or one per hidden layer: "
           f"{', '.join(sorted(ACTIVATIONS))} (default: relu)")
    a("--output-activation", default=None, choices=sorted(ACTIVATIONS), metavar="NAME",
      help="output activation (default: softmax; linear for a --target regression)")
    a("--loss", default="categorical_crossentropy", choices=sorted(LOSSES), metavar="NAME",
      help=f"{', '.join(sorted(LOSSES))} (default: categorical_crossentropy)")
    a("--init", default="xavier_uniform", metavar="NAME",
      help="weight initializer: xavier_uniform, xavier_normal, he_normal, he_uniform, "
           "lecun_normal, lecun_uniform, zeros (default: xavier_uniform)")
    a("--optimizer", default="adam", choices=list(OPTIMIZERS) + list(FULL_BATCH),
      help="minibatch: " + ", ".join(OPTIMIZERS) + "; via scipy: lbfgs, cg, full batch "
           "(--epochs is then the iteration limit) or with --mb-maxiter on minibatches; "
           "they take no --lr, --dropout, --input-dropout, --augment, --max-norm, "
           "--patience, --report-test (default: adam)")
    a("--mb-maxiter", type=positive_int, default=None, metavar="K",
      help="with --optimizer lbfgs/cg: minibatches of --batch-size, K scipy iterations "
           "on each (the 002 blog's mini-batch CG and L-BFGS-B); --epochs counts passes. "
           "Without it they run full batch")
    a("--lr", type=float_in(0, lo_open=True), default=None,
      help="learning rate (default: 1e-3; not with lbfgs/cg)")
    a("--lr-final", type=float_in(0, lo_open=True), default=None,
      help="anneal the learning rate geometrically from --lr to this value over the "
           "run (default: 1e-5; give the same value as --lr for a constant rate)")
    a("--momentum", type=float_in(0, 1, hi_open=True), default=None,
      help="for momentum/nesterov: the factor by which the velocity decays each step "
           "(default: 0.9)")
    a("--momentum-decay", type=float_in(0, 1, hi_open=True), default=None, metavar="MU",
      help="the same factor under the 002 blog's name (velocity = MU * velocity - lr * "
           "gradient); give one of the two")
    a("--l2", type=float_in(0), default=0.0, help="L2 penalty on weights (default: 0)")
    a("--clip", type=float_in(0, lo_open=True), default=None,
      help="clip the gradient to this global L2 norm")
    a("--dropout", type=float_in(0, 1, hi_open=True), default=0.0,
      help="inverted dropout rate after each hidden layer (default: 0)")
    a("--input-dropout", type=float_in(0, 1, hi_open=True), default=0.0, metavar="RATE",
      help="inverted dropout rate on the input pixels (default: 0)")
    a("--maxout", type=positive_int, default=None, metavar="K",
      help="hidden layers of maxout units, each the max of K linear pieces (Goodfellow "
           "et al. 2013) instead of --activation")
    a("--max-norm", type=float_in(0, lo_open=True), default=None, metavar="C",
      help="after every update scale each unit's incoming weight vector back to L2 norm "
           "C if longer (all layers)")
    a("--augment", choices=["none", "affine", "elastic"], default=None,
      help="deform each training image afresh every time it is seen, in whichever "
           "process computes its step: a random affine map (--shift, --rotate, --scale, "
           "--shear), or that and an elastic distortion (--elastic-alpha, "
           "--elastic-sigma) (default: affine; none with --standardize, lbfgs/cg or a "
           "--target table, and with --load whatever the checkpoint was trained with, "
           "its strengths too for those flags not given)")
    a("--shift", type=float_in(0), default=None, metavar="PX",
      help="with --augment: shift of up to PX pixels along each axis (default: 2)")
    a("--rotate", type=float_in(0, 180), default=None, metavar="DEG",
      help="with --augment: rotation of up to DEG degrees either way (default: 10)")
    a("--scale", type=float_in(0, 0.9), default=None,
      help="with --augment: zoom factor in [1 - SCALE, 1 + SCALE] (default: 0.1)")
    a("--shear", type=float_in(0, 1), default=None,
      help="with --augment: shear factor of up to SHEAR either way (default: 0.1)")
    a("--elastic-alpha", type=float_in(0), default=None, metavar="ALPHA",
      help="with --augment elastic: strength of the displacement field, in pixels per "
           "unit of smoothed noise (default: 34, Simard et al. 2003)")
    a("--elastic-sigma", type=float_in(0.1, 100), default=None, metavar="SIGMA",
      help="with --augment elastic: smoothness of the field, the Gaussian's standard "
           "deviation in pixels (default: 4)")
    a("--batch-size", type=positive_int, default=128, help="(default: 128)")
    a("--epochs", type=nonneg_int, default=20,
      help="train until this many epochs are done (counting those of --load's "
           "checkpoint; default: 20)")
    a("--patience", type=nonneg_int, default=None,
      help="stop early after this many epochs without a better validation loss")
    a("--seed", type=nonneg_int, default=0, help="seed for init, shuffling, dropout (default: 0)")
    a("--standardize", action="store_true",
      help="zero mean, unit variance per pixel (training statistics) instead of [0, 1]")
    a("--validation", type=nonneg_int, default=None,
      help="hold out the last N training images for validation (default: 10000; for a "
           "--target table, a tenth of its training rows)")
    a("--limit-train", type=positive_int, default=None, metavar="N",
      help="use only the first N training images (smoke runs)")
    a("--data", type=path_arg, default=None, metavar="DIR|CSV",
      help="MNIST directory with the four IDX files (default: $DPNET_DATA, else the MNIST "
           "bundled with dpnet); "
           "with --target, a CSV file with a header row")
    a("--target", default=None, metavar="COLUMN",
      help="train on the table --data CSV: predict this column from the others -- a "
           "classifier, or with --loss mse a regressor; non-numeric columns of up to 32 "
           "values are one-hot encoded, features standardized with training statistics")
    a("--drop", nargs="+", default=[], metavar="COLUMN",
      help="with --target: leave these columns out (names, ids, free text)")
    a("--test-fraction", type=float_in(0, 1, lo_open=True, hi_open=True), default=0.2,
      metavar="F", help="with --target: the share of rows (shuffled by --seed) held out "
                        "as the test set (default: 0.2)")
    a("--dtype", default="float32", choices=["float32", "float64"], help="(default: float32)")
    a("--save", type=path_arg, default=None, metavar="PATH", help="write a checkpoint after each epoch")
    a("--load", type=path_arg, default=None, metavar="PATH",
      help="start from this checkpoint and resume its epoch count; the model, data "
           "(--standardize, --validation, --limit-train, --dtype), --seed, --batch-size "
           "and --optimizer must be the same; --lr, --lr-final, --epochs, --patience, --l2 "
           "and --clip may change (a change of the learning rate, --l2 or --clip is "
           "noted)")
    a("--json", type=path_arg, default=None, metavar="PATH",
      help="write the run summary as JSON (- for standard output)")
    a("--plot", type=path_arg, default=None, metavar="PATH", help="save learning curves as a PNG (matplotlib)")
    a("--report-test", action="store_true",
      help="also show the test accuracy in every epoch line (as the 000 seed does) and "
           "name the best epoch by validation loss at the end; off by default: the "
           "validation set chooses, the test set is evaluated once")
    a("--quiet", action="store_true",
      help="no per-epoch lines or progress bar (the final result is still shown)")
    a("--allow-divergence", action="store_true",
      help="train on when an epoch's loss exceeds 100x where it started (by default the "
           "run stops there: exit 2; a non-finite loss always stops it)")
    if workers:
        a("--workers", type=nonneg_int, default=None,
          help="worker processes (default: physical cores; 0 = in process)")
        a("--blas-threads", type=positive_int, default=1,
          help="BLAS threads per worker (default: 1)")
        a("--on-failure", choices=["respawn", "abort"], default="respawn",
          help="what to do when a worker dies or stops answering (default: respawn)")
        add_remote_flags(a)
    if gpu:
        a("--device", type=nonneg_int, default=0, metavar="N",
          help="the CUDA device to train on (default: 0)")
        a("--update", choices=["worker", "coordinator"], default="worker",
          help="where the optimizer runs: on the GPU, its state there and only scalars "
               "crossing per step (default), or in this process, the gradient coming "
               "home and the weights going back every step")
        a("--worker-timeout", type=float_in(1), default=300.0, metavar="S",
          help="the GPU worker must answer a step within S >= 1 seconds (default: 300)")
    return p


# the deformation flags: (checkpoint key, default); None on the command line = not given
DEFORM_FLAGS = {"shift": ("shift", 2.0), "rotate": ("rotate", 10.0),
                "scale": ("scale", 0.1), "shear": ("shear", 0.1),
                "elastic_alpha": ("alpha", 34.0), "elastic_sigma": ("sigma", 4.0)}


def given_deformation_flags(args):
    """The deformation strengths given on the command line (a recipe's are not)."""
    return [f for f in DEFORM_FLAGS if getattr(args, f) is not None and f not in args.from_preset]


def checkpoint_deformation(args, chosen=None):
    """On --load: the deformation the checkpoint was trained with ("none" if none), its
    strengths filled in for the flags not given (a recipe's count as not given). A
    given one that differs, or a chosen ``--augment`` (``chosen``) that differs, is one
    line naming the flag, as the resume check names any other setting. None: an
    unreadable checkpoint or another kind of model, left to the real load to name."""
    try:
        meta = read_checkpoint_meta(args.load)
    except CheckpointError:
        return None
    model = meta.get("model")
    layers = model.get("layers") if isinstance(model, dict) else None
    if not isinstance(layers, list) or not layers or not isinstance(layers[0], dict):
        return None
    first = layers[0] if layers[0].get("type") == "deform" else {}
    kind = first.get("kind", "none")

    def differs(flag, then, now):
        raise UserError(f"--load {args.load!r} was trained with {flag} {then}, this run has "
                        f"{now}; resuming needs the same settings")
    if chosen is not None and chosen != kind:
        differs("--augment", kind, chosen)
    given = given_deformation_flags(args)
    for flag, (key, _) in DEFORM_FLAGS.items():
        if key not in first:
            continue
        if flag not in given:
            setattr(args, flag, first[key])
        elif float(getattr(args, flag)) != float(first[key]) and (
                kind == "elastic" or not flag.startswith("elastic")):
            differs(flag_name(flag), f"{first[key]:g}", f"{getattr(args, flag):g}")
    return kind


def _deforms_nothing(args, given, chosen):
    """A deformation strength given to a run that does not use it: one line, not a
    flag silently ignored."""
    if args.augment == "none":
        why = ("--augment none" if chosen
               else "the checkpoint was trained without deformations" if args.load
               else "--standardize" if args.standardize
               else f"--optimizer {args.optimizer} is full-batch"
               if args.optimizer in FULL_BATCH
               else "a --target table" if args.target
               else f"--preset {args.preset} sets --augment none")
        raise UserError(f"{flag_name(given[0])} sets how training images are deformed, but "
                        f"this run deforms none ({why}): drop it")
    elastic = [f for f in given if f.startswith("elastic")]
    if elastic and args.augment != "elastic":
        raise UserError(f"{flag_name(elastic[0])} is for --augment elastic, this run has "
                        f"--augment {args.augment}")


def default_augment(args):
    """--augment when not given: affine deformations (what takes the default network
    past 98.6%), except where they cannot apply -- standardized pixels, a full-batch
    optimizer (on --load: what the checkpoint was trained with, see build_model)."""
    if args.standardize or args.optimizer in FULL_BATCH or args.target:
        return "none"
    return "affine"


def build_model(args, steps_per_epoch, n_in=784, n_out=10):
    if args.maxout and args.activation is not None and "activation" not in args.from_preset:
        raise UserError(f"--activation is for the hidden layers' units; --maxout "
                        f"{args.maxout} units are the max of linear pieces: "
                        + (f"drop it, or --preset {args.preset} (which sets --maxout)"
                           if "maxout" in args.from_preset else "give one of them"))
    args.activation = acts = args.activation or ["relu"]
    if len(acts) not in (1, len(args.hidden)):
        raise UserError(f"--activation takes one name for all hidden layers or one per "
                        f"hidden layer ({len(args.hidden)}), got {len(acts)}")
    if len(acts) == 1:
        acts = acts * len(args.hidden)
    sizes = [n_in] + list(args.hidden)
    pieces = [args.maxout or 1] * (len(sizes) - 1) + [1]
    check_model_size(sum((a + 1) * b * k for a, b, k in zip(sizes, sizes[1:] + [n_out],
                                                             pieces)),
                     args.dtype,
                     f"--hidden {' '.join(map(str, args.hidden))}")
    layers = []
    if args.optimizer in FULL_BATCH:        # a recipe's randomness where none can apply
        for key, off in (("dropout", 0.0), ("input_dropout", 0.0), ("max_norm", None)):
            if key in args.from_preset:
                setattr(args, key, off)
    chosen = args.augment is not None and "augment" not in args.from_preset
    given = given_deformation_flags(args)
    kind = None
    if args.load:       # the checkpoint's deformation, and its strengths not given
        kind = checkpoint_deformation(args, args.augment if chosen else None)
        args.augment = args.augment if chosen else (kind or "none")
    elif args.augment is None:
        args.augment = default_augment(args)
    elif not chosen and default_augment(args) == "none":
        args.augment = "none"           # a recipe's deformations where none can apply
    if given and not (args.load and kind is None):     # (else the load names the file)
        _deforms_nothing(args, given, chosen)
    for flag, (_, default) in DEFORM_FLAGS.items():
        if getattr(args, flag) is None:
            setattr(args, flag, default)
    if args.augment != "none":
        if args.target:
            raise UserError("--augment deforms MNIST's images; a --target table has none")
        # (a checkpoint's choice meeting --standardize: the resume check names the
        # data preparation that differs)
        if args.standardize and (chosen or not args.load):
            raise UserError("--augment moves pixels, --standardize gives each pixel its own "
                            "scale: use one of them")
        layers.append(Deform((28, 28), kind=args.augment, shift=args.shift,
                             rotate=args.rotate, scale=args.scale, shear=args.shear,
                             alpha=args.elastic_alpha, sigma=args.elastic_sigma))
    if args.input_dropout:
        layers.append(Dropout(args.input_dropout))
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        if args.maxout:
            layers.append(Maxout(a, b, pieces=args.maxout, init=args.init,
                                 max_norm=args.max_norm))
        else:
            layers.append(Dense(a, b, activation=acts[i], init=args.init,
                                max_norm=args.max_norm))
        if args.dropout:
            layers.append(Dropout(args.dropout))
    layers.append(Dense(sizes[-1], n_out, activation=args.output_activation, init=args.init,
                        max_norm=args.max_norm))
    if args.optimizer in FULL_BATCH:
        given = [f for f, v, k in (("--lr", args.lr, "lr"),
                                   ("--lr-final", args.lr_final, "lr_final"))
                 if v is not None and k not in args.from_preset]
        if given:
            raise UserError(f"--optimizer {args.optimizer} is full-batch: scipy chooses its "
                            f"own steps; drop {' and '.join(given)}")
    args.lr = 1e-3 if args.lr is None else args.lr
    args.lr_final = 1e-5 if args.lr_final is None else args.lr_final
    lr = args.lr
    if args.lr_final != args.lr:
        lr = Anneal(args.lr, args.lr_final, total_steps=max(1, args.epochs * steps_per_epoch))
    kw = {"lr": lr}
    if "momentum" in args.from_preset and args.momentum_decay is not None:
        args.momentum = None            # the user's name for it wins over the recipe's
    if args.momentum is not None and args.momentum_decay is not None \
            and args.momentum != args.momentum_decay:
        raise UserError(f"--momentum {args.momentum:g} and --momentum-decay "
                        f"{args.momentum_decay:g} name the same factor: give one")
    given = [f for f, k in (("--momentum", "momentum"), ("--momentum-decay", "momentum_decay"))
             if getattr(args, k) is not None and k not in args.from_preset]
    if given and args.optimizer not in ("momentum", "nesterov"):
        raise UserError(f"{given[0]} is for --optimizer momentum or nesterov, not "
                        f"{args.optimizer}")
    args.momentum = next(v for v in (args.momentum, args.momentum_decay, 0.9) if v is not None)
    if args.optimizer in ("momentum", "nesterov"):
        kw["momentum"] = args.momentum
    if args.optimizer in FULL_BATCH:
        random = [f for f, on in (("--dropout", args.dropout), ("--input-dropout",
                                                              args.input_dropout),
                                   ("--augment", args.augment != "none"),
                                   ("--max-norm", args.max_norm is not None)) if on]
        if random == ["--augment"] and args.load and not chosen:
            raise UserError(f"--load {args.load!r} was trained with --augment {args.augment}: "
                            f"--optimizer {args.optimizer} is full-batch and needs a "
                            f"deterministic objective, so it cannot go on from it")
        if random:
            flag = " and ".join(random)
            raise UserError(f"--optimizer {args.optimizer} is full-batch and needs a "
                            f"deterministic, unconstrained objective: drop {flag}")
        optimizer = get_optimizer("sgd", lr=args.lr)     # unused: scipy does the steps
    else:
        optimizer = get_optimizer(args.optimizer, **kw)
    return Sequential(layers, loss=args.loss, optimizer=optimizer,
                      l2=args.l2, clip_norm=args.clip, dtype=np.dtype(args.dtype),
                      seed=args.seed)


def data_recipe(args, data):
    """What this run's data was and how it was prepared: what a resumed run must repeat
    (the weights were fitted to exactly that data)."""
    recipe = {"standardize": bool(args.standardize), "validation": int(args.validation),
              "limit_train": args.limit_train, "dtype": args.dtype}
    if args.target:
        recipe.update(target=args.target, drop=sorted(args.drop),
                      test_fraction=args.test_fraction)
    if data.source_crc32 is not None:
        recipe["source_crc32"] = int(data.source_crc32)
    return recipe


def data_source(args):
    """The run's data as a user knows it: the MNIST files in DIR, or the CSV file."""
    if args.target:
        return f"CSV file {args.data}"
    return f"the MNIST files in {args.data or default_mnist_dir()}"


RECIPE_FLAGS = {"standardize": "--standardize", "validation": "--validation",
                "limit_train": "--limit-train", "dtype": "--dtype", "target": "--target",
                "drop": "--drop", "test_fraction": "--test-fraction"}


# what a run's checkpoint records of its training, and the JSON type each must have
# (the least value for counts): a file edited by hand or written by something else is
# one line naming the field, never a traceback or a misleading comparison
TRAINING_FIELDS = {"step": (int, 0), "seed": (int, None), "batch_size": (int, 1),
                   "n_train": (int, 0), "optimizer": (str, None), "history": (dict, None),
                   "data": (dict, None)}


def training_record(path, meta):
    """The checkpoint's training record ({} for one saved without it), checked."""
    t = meta.get("training")
    if t is None:
        return {}
    if not isinstance(t, dict):
        raise UserError(f"checkpoint {path!r} has a malformed training record: {t!r}"[:300])
    for key, (kind, least) in TRAINING_FIELDS.items():
        v = t.get(key)
        if v is not None and (not isinstance(v, kind) or isinstance(v, bool)
                              or (least is not None and v < least)):
            raise UserError(f"checkpoint {path!r} has a bad training {key}: {v!r}"[:300])
    return t


def check_resume(path, training, now, recipe=None, source=None):
    """The step to resume from, after checking that the checkpoint's step count means
    the same thing in this run (same seed, batch size, training set, optimizer) and that
    its data is the same (its source's CRC-32) and was prepared the same way
    (checkpoints that recorded them). source: the data, named for a user."""
    flags = {"seed": "--seed", "batch_size": "--batch-size", "n_train": "training-set size",
             "optimizer": "--optimizer"}
    for key, value in now.items():
        then = training.get(key)
        if then is not None and then != value:
            raise UserError(f"--load {path!r} was trained with {flags[key]} {then}, this run "
                            f"has {value}; resuming needs the same settings")
    then = training.get("data")
    if isinstance(then, dict) and recipe is not None:
        ours, theirs = recipe.get("source_crc32"), then.get("source_crc32")
        if theirs is not None and (not isinstance(theirs, int) or isinstance(theirs, bool)):
            raise UserError(f"checkpoint {path!r} has a bad data CRC-32: {theirs!r}"[:300])
        if ours is not None and theirs is not None and ours != theirs:
            # (older checkpoints have no CRC: they resume on trust, as they always did)
            raise UserError(f"--load {path!r} was not trained on this data ("
                            + (f"{source}: " if source else "") + f"CRC-32 {ours:08x}; the "
                            f"checkpoint records {theirs:08x}); resuming needs the same data")
        for key, value in recipe.items():
            if key in then and key in RECIPE_FLAGS and then[key] != value:
                raise UserError(f"--load {path!r} was trained with {RECIPE_FLAGS[key]} "
                                f"{then[key]}, this run has {value}: the same weights on "
                                f"other data; resuming needs the same data settings")
    return int(training.get("step", 0))


def note_changes(prog, path, meta, model):
    """What may change on a continuation, said in one line each when it does: the
    learning rate's schedule (--lr, --lr-final, and --epochs, which stretches the
    annealing), the L2 penalty and the gradient clip."""
    then = ((meta.get("optimizer") or {}).get("config") or {}).get("schedule")
    now = model.optimizer.config().get("schedule")
    if then is not None and then != now:      # (both valid: the optimizer was restored)
        then, now = schedule_from_config(then), schedule_from_config(now)
        print(f"{prog}: note: --load {path!r} was trained with learning rate {then}; "
              f"continuing with {now}", file=sys.stderr)
    theirs, ours = meta["model"], model.config()     # (a dict: the weights loaded)
    for key, flag in (("l2", "--l2"), ("clip_norm", "--clip")):
        if key in theirs and theirs[key] != ours.get(key):
            was = "none" if theirs[key] is None else (
                f"{theirs[key]:g}" if isinstance(theirs[key], (int, float)) else
                repr(theirs[key])[:40])
            now = "none" if ours.get(key) is None else f"{ours[key]:g}"
            print(f"{prog}: note: --load {path!r} was trained with {flag} {was}; "
                  f"continuing with {now}", file=sys.stderr)


def per_class_accuracy(model, x, y, n_classes=10):
    if n_classes == 0:                                # a regression
        return []
    # single-label, any loss; a softmax's decided on its logits, as evaluate counts
    pred = model.predict(x) if model.loss.name == "categorical_crossentropy" else \
        model.predict_proba(x).argmax(axis=1)
    return [float((pred[y == k] == k).mean()) if (y == k).any() else float("nan")
            for k in range(n_classes)]


def regression_scores(model, x, y, mean=0.0, std=1.0):
    """Mean squared error in the target's units (targets standardized as (y - mean) /
    std) and the coefficient of determination R^2 on (x, y)."""
    pred = np.asarray(model.predict_proba(x), dtype=np.float64).reshape(len(y), -1) * std + mean
    y = np.asarray(y, dtype=np.float64).reshape(len(y), -1) * std + mean
    mse = float(((pred - y) ** 2).mean())
    var = float(((y - y.mean(axis=0)) ** 2).mean())
    return {"mse": mse, "r2": 1.0 - mse / var if var > 0 else float("nan")}


def curve_summary(hist):
    """The training curve as the 001 seed sums it up: loss minimum and final, accuracy
    maximum and final (each with its epoch); and the best epoch by validation loss,
    with its test accuracy when that was watched (--report-test)."""
    h, epochs = hist.history, hist.epochs
    lines = []
    def seen(key):                      # a metric some epochs have (NaN: not measured)
        return bool(epochs) and key in h and not np.all(np.isnan(h[key]))

    if seen("loss"):
        loss = h["loss"]
        i = int(np.nanargmin(loss))
        text = (f"training loss: min {loss[i]:.4f} (epoch {epochs[i]}), final {loss[-1]:.4f}")
        if seen("accuracy"):
            acc = h["accuracy"]
            j = int(np.nanargmax(acc))
            text += f"; accuracy: max {acc[j]:.4f} (epoch {epochs[j]}), final {acc[-1]:.4f}"
        lines.append(text)
    if seen("val_loss") and seen("test_accuracy"):
        # among the epochs that watched the test set
        watched = np.where(np.isnan(h["test_accuracy"]), np.inf, h["val_loss"])
        k = int(np.argmin(watched))
        lines.append(f"best epoch by validation loss: {epochs[k]} (val_loss "
                     f"{h['val_loss'][k]:.4f}, val_acc {h['val_accuracy'][k]:.4f}, test_acc "
                     f"{h['test_accuracy'][k]:.4f})")
    return lines


def report(model, hist, results, per_class, wall, out=print, settings=None, classes=None):
    out("")
    test = results["test"]
    if "accuracy" in test:
        right = int(round(test["accuracy"] * test["n"]))
        out(f"test accuracy: {test['accuracy'] * 100:.2f}%  ({right}/{test['n']} right, "
            f"loss {test['loss']:.4f})")
        names = classes or range(len(per_class))
        out(f"per-{'class' if classes else 'digit'} accuracy: "
            + "  ".join(f"{k}: " + ("none in the test set" if a != a else f"{a * 100:.1f}%")
                        for k, a in zip(names, per_class)))
    else:                                             # a regression
        r2 = f"{test['r2']:.4f}" if math.isfinite(test["r2"]) else \
            "n/a (the test targets are all equal)"
        out(f"test MSE: {test['mse']:.6g}  R^2: {r2}  ({test['n']} rows)")
    for line in curve_summary(hist):
        out(line)
    if settings:
        out(settings)
    sps = hist.samples / hist.wall_time if hist.wall_time > 0 else 0.0
    ready = getattr(hist, "start_time", 0.0)
    out(f"execution time: {wall:.1f} s ("
        + (f"{hist.wall_time:.1f} s training, {sps:,.0f} samples/s" if hist.samples
           else "nothing trained")
        # a wait for remote workers to join is not training time: said beside it
        + (f"; {ready:.1f} s until the workers were ready" if ready >= 1.0 else "") + ")")
    dense = [l for l in model.layers if isinstance(l, Dense)]
    out("nodes per layer: " + " -> ".join(str(n) for n in [dense[0].n_in] +
                                          [l.n_out for l in dense]))
    out("weight shapes: " + ", ".join(f"W{i + 1} {l.W.shape[0]}x{l.W.shape[1]} + b{i + 1} "
                                     f"{l.b.shape[0]}" for i, l in enumerate(dense)))
    nodes = dense[0].n_in + sum(l.n_out for l in dense)
    out(f"total weights: {model.n_params:,}  (total nodes: {nodes:,})")


def plot_history(hist, path):
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator
    h = hist.history
    keys = [k for k in ("loss", "accuracy") if k in h]     # a regression has no accuracy
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 4), squeeze=False)
    for key, ax in zip(keys, axes[0]):
        ax.plot(hist.epochs, h[key], "o-", label="train")
        if f"val_{key}" in h:
            ax.plot(hist.epochs, h[f"val_{key}"], "s-", label="validation")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))     # no epoch 1.5
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def _run_minibatch_scipy(args, model, data, val, engine, hist, say):
    """--optimizer lbfgs/cg --mb-maxiter K: scipy on one minibatch at a time. Ctrl-C
    stops after the current minibatch and saves; --load goes on from that minibatch."""
    steps = -(-len(data.x_train) // args.batch_size)
    if hist.step >= args.epochs * steps:
        say("nothing to train (raise --epochs)")
        return

    def record(epoch, metrics):
        hist.append(epoch, metrics)
        hist.step = epoch * steps
        if args.save:
            _save(args, model, data, hist)
            hist.saved_step = hist.step
        return False

    t0 = time.perf_counter()
    with GracefulStop() as stop:
        run = minimize_minibatches(model, data.x_train, data.y_train,
                                   method=FULL_BATCH[args.optimizer],
                                   batch_size=args.batch_size, mb_maxiter=args.mb_maxiter,
                                   epochs=args.epochs, validation_data=val, engine=engine,
                                   seed=args.seed, callback=record,
                                   print_fn=None if args.quiet else say,
                                   initial_step=hist.step, stop=stop)
        hist.start_time = getattr(engine, "start_seconds", 0.0)   # (as fit's)
        hist.wall_time = time.perf_counter() - t0 - hist.start_time
        hist.samples += run.samples
        if run.step != hist.step:             # stopped inside an epoch
            hist.step = run.step
            if args.save:                     # (a second signal waits for the write)
                _save(args, model, data, hist)
                hist.saved_step = hist.step
    _stopped(hist, stop, run.interrupted, say, f"minibatch {hist.step}")
    say(f"scipy {FULL_BATCH[args.optimizer]} on minibatches of {args.batch_size}, "
        f"{args.mb_maxiter} iterations each: {run.evals} gradient evaluations")


def _stopped(hist, stop, interrupted, say, where):
    hist.interrupted = interrupted
    hist.stop_signal = stop.requested if interrupted else None
    if interrupted:
        say(f"stopped by {stop.requested} after {where}; the model keeps its last weights")


def _run_full_batch(args, model, data, val, engine, hist, say):
    """--optimizer lbfgs/cg: scipy's minimizer, one full-batch gradient per evaluation.
    Ctrl-C stops after the current iteration (each one is saved)."""
    done = hist.step                   # iterations a --load checkpoint already ran

    def record(it, metrics):
        hist.append(done + it, metrics)
        hist.step = done + it
        if args.save:
            _save(args, model, data, hist)
            hist.saved_step = hist.step
        return False

    if args.epochs <= done:
        say((f"the checkpoint has run {done} iterations already; " if done else "")
            + "nothing to train (raise --epochs)")
        return
    if done:
        # scipy's minimizers keep their curvature memory to themselves: a resumed
        # L-BFGS / CG starts from the saved weights with a fresh memory
        say(f"continuing from iteration {done} (the {args.optimizer} memory restarts)")
    t0 = time.perf_counter()
    with GracefulStop() as stop:
        result = minimize(model, data.x_train, data.y_train,
                          method=FULL_BATCH[args.optimizer], maxiter=args.epochs - done,
                          validation_data=val, engine=engine, callback=record,
                          print_fn=None if args.quiet else say, iterations_done=done,
                          stop=stop)
    hist.start_time = getattr(engine, "start_seconds", 0.0)       # (as fit's)
    hist.wall_time = time.perf_counter() - t0 - hist.start_time
    hist.samples = len(data.x_train) * result.nfev
    _stopped(hist, stop, stop.requested is not None, say, f"iteration {hist.step}")
    if result.status != STOPPED:
        say(f"scipy {FULL_BATCH[args.optimizer]}: {result.message} "
            f"({result.nfev} gradient evaluations)")


def resumed_history(d, path):
    """The epochs a checkpoint already trained, so a resumed run's curves, JSON and next
    checkpoint cover the whole training; the timings stay this run's own."""
    try:
        h = History.from_dict(d)
        if not all(isinstance(e, int) and not isinstance(e, bool) for e in h.epochs):
            raise ValueError("epochs")
        for k, v in h.history.items():
            if len(v) != len(h.epochs) or not all(isinstance(x, (int, float)) for x in v):
                raise ValueError(k)
    except (TypeError, ValueError, AttributeError):
        raise UserError(f"checkpoint {path!r} has a malformed training history") from None
    h.wall_time = 0.0
    return h




def run_dnn(argv=None, prog=None, workers_flag=False, default_workers=0, gpu=False):
    """The whole command: exit code 0 (done), 130 (stopped by Ctrl-C / SIGTERM), 2 (a
    user error, one line), 1 (a worker failed). ``gpu``: train on a GPU worker
    (runDnnGPU.py), else on CPU workers (``workers_flag``) or in process."""
    parser = dnn_parser(prog or os.path.basename(sys.argv[0]), workers=workers_flag, gpu=gpu)
    apply_preset(parser, argv)
    args = parser.parse_args(argv)
    # what the preset chose, not the user: checks of "flags that do not go together"
    # skip these (a value typed that equals the preset's counts as the preset's)
    preset = PRESETS[args.preset][1] if args.preset else {}
    args.from_preset = sorted(k for k, v in preset.items() if getattr(args, k) == v)
    args.gpu = gpu
    return guarded(parser.prog, _run_dnn, args, parser.prog, default_workers)


def _run_dnn(args, prog, default_workers):
    check_output_paths(args, ("save", "json", "plot"), inputs=("load", "data"))
    lock = SaveLock(args.save) if args.save else None
    try:
        return _run_dnn_locked(args, prog, default_workers)
    finally:
        if lock is not None:
            lock.release()


def _run_dnn_locked(args, prog, default_workers):
    t_start = time.perf_counter()
    if json_on_stdout(args.json):            # stdout is for the JSON alone
        args.quiet = True
    if args.plot:
        plot_format(args.plot)
    data = _load_data(args)
    if args.limit_train is not None and args.limit_train > len(data.x_train):
        print(f"{prog}: note: --limit-train {args.limit_train} is more than the "
              f"{len(data.x_train):,} training images there are; using them all",
              file=sys.stderr)
    steps_per_epoch = -(-len(data.x_train) // args.batch_size)
    model = build_model(args, steps_per_epoch, n_in=data.x_train.shape[1],
                        n_out=data.n_classes or 1)
    initial_step, hist = _resume(args, model, data)
    say = (lambda *a, **k: None) if args.quiet else print
    what = "rows" if isinstance(data, Table) else "images"
    say(f"{prog}: {model.n_params:,} parameters, {len(data.x_train):,} training / "
        f"{len(data.x_val):,} validation / {len(data.x_test):,} test {what}")
    if isinstance(data, Table):
        shown = data.features if len(data.features) <= 24 else \
            data.features[:20] + [f"... {len(data.features) - 20:,} more"]
        say(f"{prog}: {len(data.features)} features from {os.path.basename(args.data)} "
            f"({', '.join(shown)}); target {data.target!r}: "
            + (f"{data.n_classes} classes" if data.classes else "a number"))
    engine, workers = _engine(args, default_workers, prog, say)
    try:
        _train(args, model, data, engine, hist, initial_step, steps_per_epoch, prog, say)
    except (FloatingPointError, WorkerError) as e:      # diverged; a worker failed
        if args.json:
            write_failure_json(args, prog, e, _progress(
                model, hist, time.perf_counter() - t_start, workers,
                initial_step // steps_per_epoch))
        raise
    finally:
        engine.close()
    _finish(args, model, data, hist, workers, t_start, initial_step // steps_per_epoch, say,
            prog)
    if hist.interrupted and args.save and hist.saved_step == hist.step:
        print(f"{prog}: saved the last weights (step {hist.step}) to {args.save}",
              file=sys.stderr)
    return exit_code(hist)


REGRESSION_LOSSES = ("mse", "mean_squared_error")


def _load_data(args):
    """MNIST, or with --target the CSV table; --validation and --output-activation
    resolved for it."""
    if args.target is None:
        for flag, given in (("--drop", args.drop), ("--test-fraction",
                                                    args.test_fraction != 0.2)):
            if given:
                raise UserError(f"{flag} is for a --target table")
        if args.data is not None and os.path.isfile(args.data):
            raise UserError(f"--data {args.data} is a file: give --target COLUMN to train "
                            f"on a CSV table, or an MNIST directory")
        args.validation = 10_000 if args.validation is None else args.validation
        args.output_activation = args.output_activation or "softmax"
        return load_mnist(args.data, standardize=args.standardize, validation=args.validation,
                          limit_train=args.limit_train, dtype=np.dtype(args.dtype))
    if args.data is None:
        raise UserError("--target names a column of a CSV table: give the file with --data")
    if args.standardize:
        raise UserError("--standardize is for MNIST: a table is always standardized with "
                        "its training rows' statistics")
    if args.limit_train is not None:
        raise UserError("--limit-train is for MNIST: a table uses all its rows "
                        "(--test-fraction and --validation split them)")
    regression = args.loss in REGRESSION_LOSSES
    table = load_table(args.data, args.target,
                       task="regression" if regression else "classification",
                       test_fraction=args.test_fraction, validation=args.validation,
                       seed=args.seed, drop=args.drop, dtype=np.dtype(args.dtype))
    args.validation = len(table.x_val)
    args.output_activation = args.output_activation or ("linear" if regression else "softmax")
    if regression and args.output_activation in ("softmax", "sigmoid", "relu", "tanh"):
        raise UserError(f"--output-activation {args.output_activation} cannot reach a "
                        f"regression target (standardized: mean 0, standard deviation 1, "
                        f"negative and beyond 1 too): use linear (the default)")
    return table


def _resume(args, model, data):
    """(initial step, history): from --load's checkpoint, after checking that its step
    count means the same in this run, else a fresh start."""
    if not args.load:
        return 0, History()
    training = training_record(args.load, read_checkpoint_meta(args.load))
    then = training.get("optimizer")
    if then is not None and then != args.optimizer:  # before its state is compared
        raise UserError(f"--load {args.load!r} was trained with --optimizer {then}, this run "
                        f"has {args.optimizer}; resuming needs the same settings")
    if not training:
        # saved by model.save() or ModelCheckpoint: weights with no step count, seed or
        # batch size to resume from (an optimizer's step count alone would skew the
        # learning rate's schedule): a fresh run from those weights
        load_weights_into(model, args.load, optimizer="none")
        print(f"{os.path.basename(sys.argv[0]) or 'dpnet'}: note: --load {args.load!r} has "
              f"no training record (it was saved by model.save or ModelCheckpoint, not "
              f"--save): training starts from its weights, with a fresh optimizer",
              file=sys.stderr)
        return 0, History()
    meta = load_weights_into(model, args.load, optimizer="state")
    n, then, step_size = len(data.x_train), training.get("batch_size"), _step_size(args, data)
    if (args.optimizer in FULL_BATCH and training.get("optimizer") == args.optimizer
            and training.get("n_train") == n and then is not None):
        full = not args.mb_maxiter
        if full and then != n:
            raise UserError(f"--load {args.load!r} was trained with --optimizer "
                            f"{args.optimizer} on minibatches of {then}: give --mb-maxiter "
                            f"K --batch-size {then} to go on")
        if not full and then == n and args.batch_size != n:
            raise UserError(f"--load {args.load!r} was trained with --optimizer "
                            f"{args.optimizer} full batch: drop --mb-maxiter to go on")
    step = check_resume(args.load, training,
                        {"seed": args.seed,
                         "batch_size": step_size,
                         "n_train": len(data.x_train), "optimizer": args.optimizer},
                        data_recipe(args, data), data_source(args))
    past = training.get("history")
    hist = resumed_history(past, args.load) if past else History()
    hist.partial = epoch_partial(args.load, training, step)
    hist.stopped_early = bool((past or {}).get("stopped_early"))
    hist.early_stopping = training.get("early_stopping")
    note_changes(os.path.basename(sys.argv[0]) or "dpnet", args.load, meta, model)
    hist.step = step
    return step, hist


def epoch_partial(path, training, step):
    """The sums of the epoch a checkpoint was saved in the middle of, checked (None for
    none, or a checkpoint that recorded none: its resumed epoch's metrics then cover
    the steps after it)."""
    part = training.get("epoch_partial")
    if part is None:
        return None
    ok = (isinstance(part, dict) and part.get("step") == step
          and all(isinstance(part.get(k), int) and not isinstance(part.get(k), bool)
                  and part[k] >= 0 for k in ("correct", "seen"))
          and all(isinstance(part.get(k), (int, float)) and not isinstance(part.get(k), bool)
                  and math.isfinite(part[k]) for k in ("loss_sum", "seconds")))
    if not ok:
        raise UserError(f"checkpoint {path!r} has a bad training epoch_partial: {part!r}"[:300])
    return part


def early_stopping_for(args, hist, model):
    """--patience's callback, given the checkpoint's early-stopping state on --load (so
    that a resumed run stops where the uninterrupted one would, keeping the same
    weights); None without --patience."""
    if args.patience is None:
        return None
    es = EarlyStopping(patience=args.patience)
    states = getattr(hist, "early_stopping", None)
    if not states:
        return es
    try:
        if not isinstance(states, list) or len(states) != 1:
            raise ValueError(f"early-stopping states {states!r}"[:200])
        arrays, _ = read_checkpoint(args.load)
        best = arrays.get("early.0.best_params")
        if best is not None and best.shape != (model.n_params,):
            raise ValueError(f"best weights of shape {best.shape}")
        es.resume(states[0], best)
    except ValueError as e:
        raise UserError(f"checkpoint {args.load!r} has a bad early-stopping state: {e}") \
            from None
    return es


def _engine(args, default_workers, prog, say):
    """(engine, worker count) for --workers (runDnn.py), a GPU (runDnnGPU.py) or in
    process (runDnnDebug.py)."""
    if args.gpu:
        engine = gpu_engine(args.device, update=args.update, step_timeout=args.worker_timeout,
                            on_failure="abort",
                            on_hello=device_line(prog, say, lambda: engine.group.describe()))
        return engine, 1
    if getattr(args, "remote_workers", None) is not None:
        engine = remote_engine(args, prog, args.batch_size, "samples")
        return engine, engine.n_workers
    no_remote_flags(args)
    workers = getattr(args, "workers", None)
    if workers is None:
        workers = default_workers
    workers = cap_workers(workers, args.batch_size, "samples", prog)
    if not workers:
        return make_engine(0), 0
    engine = make_engine(workers, blas_threads=args.blas_threads, on_failure=args.on_failure,
                         step_timeout=args.worker_timeout)
    say(f"{prog}: {engine.group.describe()}")
    return engine, workers


def _train(args, model, data, engine, hist, initial_step, steps_per_epoch, prog, say):
    es = early_stopping_for(args, hist, model)
    callbacks = [es] if es is not None else []
    val = (data.x_val, data.y_val) if len(data.x_val) else None
    if callbacks and val is None:
        raise UserError("--patience needs a validation set (--validation > 0)")
    if args.optimizer in FULL_BATCH:
        for flag, given in (("--report-test", args.report_test),
                            ("--patience", args.patience is not None)):
            if given:
                raise UserError(f"{flag} is for the minibatch optimizers, not --optimizer "
                                f"{args.optimizer}")
    if args.mb_maxiter is not None and args.optimizer not in FULL_BATCH:
        raise UserError(f"--mb-maxiter is for --optimizer lbfgs or cg, not "
                        f"{args.optimizer}")
    try:
        if args.optimizer in FULL_BATCH and args.mb_maxiter:
            _run_minibatch_scipy(args, model, data, val, engine, hist, say)
        elif args.optimizer in FULL_BATCH:
            _run_full_batch(args, model, data, val, engine, hist, say)
        elif initial_step >= args.epochs * steps_per_epoch:
            say(f"{prog}: the checkpoint has trained {len(hist.epochs) or '?'} epochs "
                f"(step {initial_step}) already: nothing to train (raise --epochs)"
                if initial_step else f"{prog}: --epochs 0: nothing to train")
        elif es is not None and es.stopped:
            if hist.stopped_early:
                say(f"{prog}: the checkpoint's run stopped early after epoch "
                    f"{hist.epochs[-1]} (no better val_loss in {es.wait} epochs; --patience "
                    f"{args.patience}) and keeps epoch {es.best_epoch}'s weights: nothing "
                    f"to train (raise --patience to go on)")
            else:
                # a lower --patience than the run had: it has waited long enough already,
                # so it stops now, as an uninterrupted run with this patience would have
                kept = (f"epoch {es.best_epoch}'s weights (val_loss {es.best:.4f})"
                        if es.best_params is not None else
                        "its last weights (the checkpoint holds no best ones)")
                if es.best_params is not None:
                    model.params = es.best_params
                hist.stopped_early = True
                print(f"{prog}: stopped early: with --patience {args.patience}, no better "
                      f"val_loss in the checkpoint's last {es.wait} epochs; the model keeps "
                      f"{kept}", file=sys.stderr if json_on_stdout(args.json) else sys.stdout)
                if args.save:
                    extra = {} if hist.partial is None else {"epoch_partial": hist.partial}
                    _save(args, model, data, hist, early_stopping=[es], **extra)
                    hist.saved_step = hist.step
        else:
            if hist.stopped_early:
                kept = es.best_epoch if es is not None else None
                print(f"{prog}: note: --load {args.load!r} stopped early after epoch "
                      f"{hist.epochs[-1]} and holds the weights --patience kept"
                      + (f" (epoch {kept}'s)" if kept else "") + "; training goes on "
                      "from them", file=sys.stderr)
            fit(model, data.x_train, data.y_train, epochs=args.epochs,
                batch_size=args.batch_size, validation_data=val, callbacks=callbacks,
                seed=args.seed, verbose=not args.quiet, engine=engine,
                checkpoint=args.save, initial_step=initial_step, history=hist,
                divergence=None if args.allow_divergence else 100.0,
                checkpoint_extra={"optimizer": args.optimizer, "data": data_recipe(args, data)},
                test_data=(data.x_test, data.y_test) if args.report_test else None,
                on_interrupt="return")       # the exit code says it: 130, 143, ...
            if hist.stopped_early and callbacks:    # part of the result: even --quiet
                es = callbacks[0]
                print(f"{prog}: stopped early after epoch {hist.epochs[-1]} (--patience "
                      f"{args.patience}): no better val_loss in the last {es.wait} "
                      f"epoch{'s' * (es.wait != 1)}; the model keeps epoch "
                      f"{es.best_epoch}'s weights (val_loss {es.best:.4f})",
                      file=sys.stderr if json_on_stdout(args.json) else sys.stdout)
    except WorkerError:
        if args.save:     # the checkpoint of the last completed step stands: fit wrote
            # it; scipy's modes wrote each iteration's or epoch's as it ended (the
            # weights now are inside a line search, no step's)
            if hist.saved_step is not None:
                print(f"{prog}: saved the last weights (step {hist.saved_step}) to "
                      f"{args.save}", file=sys.stderr)
        raise


def _step_size(args, data):
    """The samples one step covers: the whole training set for full-batch lbfgs/cg,
    else a minibatch -- what a checkpoint records and a resume checks."""
    full = args.optimizer in FULL_BATCH and not args.mb_maxiter
    return len(data.x_train) if full else args.batch_size


def _save(args, model, data, hist, early_stopping=(), **extra):
    save_training_checkpoint(args.save, model, hist.step, args.seed, _step_size(args, data),
                             hist, n_train=len(data.x_train), optimizer=args.optimizer,
                             data=data_recipe(args, data), early_stopping=early_stopping, **extra)


def _finish(args, model, data, hist, workers, t_start, epochs_before, say, prog):
    """The report, a checkpoint when training wrote none, the JSON summary, the plot."""
    val = (data.x_val, data.y_val) if len(data.x_val) else None
    results = {"train": model.evaluate(data.x_train, data.y_train),
               "test": model.evaluate(data.x_test, data.y_test)}
    if val is not None:
        results["val"] = model.evaluate(*val)
    if data.n_classes == 0:                      # a table's regression
        results["test"].update(regression_scores(model, data.x_test, data.y_test,
                                                 data.y_mean, data.y_std))
    per_class = per_class_accuracy(model, data.x_test, data.y_test, data.n_classes)
    wall = time.perf_counter() - t_start
    # the result is shown with --quiet too (it hides the epochs and the progress bar),
    # on stderr when stdout carries the JSON summary
    report(model, hist, results, per_class, wall,
           out=(lambda line: print(line, file=sys.stderr)) if json_on_stdout(args.json)
           else print, settings=_settings(args), classes=getattr(data, "classes", None))
    if args.save and (hist.step == 0 or not hist.epochs):
        _save(args, model, data, hist)
    if args.json:
        summary = _summary(args, model, hist, results, per_class, wall, workers, epochs_before)
        if getattr(data, "classes", None):       # a table's labels, in per_class's order
            summary["classes"] = list(data.classes)
        write_json(args.json, summary)
    if args.plot:
        if hist.epochs:
            plot_history(hist, args.plot)
        else:
            say(f"{prog}: no complete epoch: no plot written")


def _settings(args):
    if args.optimizer in FULL_BATCH and args.mb_maxiter:
        return (f"optimizer: {args.optimizer} on minibatches, {args.mb_maxiter} iterations "
                f"each, batch size {args.batch_size}")
    if args.optimizer in FULL_BATCH:
        return f"optimizer: {args.optimizer} (full batch)"
    lr = f"{args.lr:g}" if args.lr == args.lr_final else f"{args.lr:g} annealed to {args.lr_final:g}"
    return f"optimizer: {args.optimizer}, learning rate {lr}, batch size {args.batch_size}"


def _summary(args, model, hist, results, per_class, wall, workers, epochs_before):
    return {
        "train": results["train"], "val": results.get("val"), "test": results["test"],
        "per_class_test_accuracy": per_class,
        **_progress(model, hist, wall, workers, epochs_before),
        "interrupted": hist.interrupted, "stopped_early": hist.stopped_early,
        "error": None, "diverged": False,
        "args": vars(args), "platform": platform_info(),
    }


def _progress(model, hist, wall, workers, epochs_before):
    """What a --json summary says of the training itself, whatever its end."""
    return {
        "epochs": hist.epochs[-1] if hist.epochs else epochs_before,
        "steps": hist.step, "history": hist.history,
        "wall_seconds": wall, "train_seconds": hist.wall_time,
        "start_seconds": hist.start_time,
        "samples_per_second": hist.samples / hist.wall_time if hist.wall_time else 0.0,
        "n_params": int(model.n_params),
        "layers": [l.n_in for l in model.layers if isinstance(l, Dense)][:1]
        + [l.n_out for l in model.layers if isinstance(l, Dense)],
        "engine": {"workers": workers, **(getattr(hist, "engine_stats", {}) or {})},
    }


def main_dnn():
    """The ``runDnn`` console command: CPU worker processes (default: one per core)."""
    from ..engines.coordinator import default_workers
    sys.exit(run_dnn(prog="runDnn", workers_flag=True, default_workers=default_workers()))


def main_debug():
    """The ``runDnnDebug`` console command: in this one process."""
    sys.exit(run_dnn(prog="runDnnDebug"))


def main_gpu():
    """The ``runDnnGPU`` console command: a GPU worker."""
    sys.exit(run_dnn(prog="runDnnGPU", gpu=True))
