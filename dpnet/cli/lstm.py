"""Command-line front end of scripts/runLstm.py: train a character LSTM on a text
file, continue from a checkpoint, or generate text from one.

User errors (bad flags, a missing, empty, non-UTF-8 or too short text, a checkpoint
that does not fit, a character outside the vocabulary) end with ONE line on stderr
and exit code 2; a worker failure with exit code 1; Ctrl-C / SIGTERM during training
with a checkpoint (under --save) and exit code 130. A traceback means a bug in dpnet.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np

from ..data.text import (MAX_TEXT_BYTES, StreamBatcher, TextError, load_corpus, read_text,
                         split, tiny_shakespeare)
from ..engines import gpu_engine, make_engine
from ..engines.errors import WorkerError
from ..models.lstm import CharLSTM
from ..optim.optimizers import get_optimizer
from ..optim.schedules import as_schedule
from ..training.history import LN2, TextHistory, exit_code
from ..training.text import fit_text
from ..training.text_checkpoint import load_text_checkpoint
from .common import (Parser, SaveLock, UserError, add_remote_flags, cap_workers,
                     check_model_size, no_remote_flags, remote_engine,
                     check_output_paths, device_line, flag_name, float_in, given_flags,
                     guarded, json_on_stdout, platform_info,
                     nonneg_int, path_arg, plot_format, positive_int, pyplot,
                     save_figure, write_failure_json, write_json)

DEFAULT_TEXT = tiny_shakespeare()
DEFAULTS = {"hidden": 256, "layers": 1, "seq_len": 64, "batch_size": 32, "optimizer": "adam"}
DEFAULT_LR = {"adam": 2e-3, "adagrad": 0.1}
DEFAULT_STEPS = 3000
# The model's own default is 1.0 (Gers et al.). Here the state is carried across a
# whole epoch (490 chunks of tiny Shakespeare), and with 1.0 the cell state drifts
# (|c| ~ 50 after 1500 steps, ~ 10 with 0.0): the model comes to rely on a warmed-up
# state, and validation and samples, which start from zeros, suffer -- measured at
# H=256 after 1500 steps: val 2.18 nats/char with 1.0, 1.75 with 0.0 (1.78 with 1.0
# from a warmed-up state), and garbled samples until step ~2000 with 1.0.
DEFAULT_FORGET_BIAS = 0.0

EXAMPLE = """examples:
  %(prog)s                                   # tiny Shakespeare, H=256, 3000 steps
  %(prog)s --steps 5000 --save shakespeare.npz --json run.json
  %(prog)s --load shakespeare.npz --steps 8000 --save shakespeare.npz   # continue
  %(prog)s --layers 2 --hidden 128 --steps 4000             # a stacked LSTM
  %(prog)s --load shakespeare.npz --sample 500 --temperature 0.8 --prime "ROMEO:"
  %(prog)s --text notes.txt --hidden 64 --seq-len 32 --batch-size 8 --steps 200
  %(prog)s --gpu --hidden 512 --steps 5000 --save big.npz   # on a CUDA GPU
"""


def lstm_parser(prog):
    p = Parser(prog=prog, description="Train a character-level LSTM language model on a "
                "UTF-8 text file, or generate text from a checkpoint.",
                epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--text", type=path_arg, default=None, metavar="PATH",
      help="UTF-8 training text (default: the --load checkpoint's, else the bundled "
           "tiny Shakespeare)")
    a("--max-text-mb", type=positive_int, default=MAX_TEXT_BYTES >> 20, metavar="MB",
      help=f"refuse a --text larger than this (default: {MAX_TEXT_BYTES >> 20})")
    a("--val-fraction", type=float_in(0, 1, hi_open=True), default=None, metavar="F",
      help="the last F of the text is the validation set (default: 0.1, or the "
           "checkpoint's; 0 = none)")
    a("--hidden", type=positive_int, default=None, metavar="H",
      help=f"LSTM hidden size (default: {DEFAULTS['hidden']}, or the checkpoint's)")
    a("--layers", type=positive_int, default=None, metavar="L",
      help="stacked LSTM layers, each of size H (default: 1, or the checkpoint's)")
    a("--seq-len", type=positive_int, default=None, metavar="T",
      help=f"characters per chunk, the BPTT length (default: {DEFAULTS['seq_len']}, "
           f"or the checkpoint's)")
    a("--batch-size", type=positive_int, default=None, metavar="B",
      help=f"parallel streams (default: {DEFAULTS['batch_size']}, or the checkpoint's)")
    a("--optimizer", choices=["adagrad", "adam"], default=None,
      help="(default: adam, or the checkpoint's)")
    a("--lr", type=float_in(0, lo_open=True), default=None,
      help="learning rate (default: 2e-3 for adam, 0.1 for adagrad, or the checkpoint's)")
    a("--clip", type=float_in(0), default=None, metavar="NORM",
      help="clip the gradient to this global L2 norm (default: 5; 0 = off)")
    a("--clip-value", type=float_in(0), default=None, metavar="V",
      help="clip each gradient entry to [-V, V], before --clip (default: off; 0 = off)")
    a("--train-temperature", type=float_in(0, lo_open=True), default=None, metavar="T",
      help="the softmax temperature of the output in training: the model learns "
           "softmax(logits / T) (the 000 seed's temperature argument of train; default: 1, "
           "or the checkpoint's with --load); --temperature still scales sampling on top")
    a("--forget-bias", type=float_in(-100, 100), default=DEFAULT_FORGET_BIAS,
      help="initial forget-gate bias (default: 0, which trains better here than 1 with "
           "the state carried through whole epochs; see DEFAULT_FORGET_BIAS)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--steps", type=nonneg_int, default=None,
                   help=f"train until this global step, counting a --load checkpoint's "
                        f"(default: {DEFAULT_STEPS})")
    g.add_argument("--epochs", type=nonneg_int, default=None,
                   help="train until this many epochs are done, counting --load's")
    a("--workers", type=nonneg_int, default=0,
      help="worker processes sharing each batch's streams (default: 0 = in process: "
           "unlike the MLP's, the LSTM's step is a serial recurrence that workers do not "
           "speed up on a few cores, as the README's benchmark shows)")
    a("--blas-threads", type=positive_int, default=None, metavar="N",
      help="BLAS threads in this process (workers=0) or per worker (default: the BLAS "
           "library's choice in process, 1 per worker)")
    a("--on-failure", choices=["respawn", "abort"], default="respawn",
      help="what to do when a worker dies (default: respawn)")
    add_remote_flags(a)
    a("--gpu", action="store_true",
      help="train on a CUDA GPU (one GPU worker process; needs pip install -e \".[gpu]\")")
    a("--device", type=nonneg_int, default=0, metavar="N",
      help="with --gpu: the CUDA device (default: 0)")
    a("--update", choices=["worker", "coordinator"], default="worker",
      help="with --gpu: the optimizer on the GPU (default) or in this process")
    a("--eval-every", type=nonneg_int, default=500, metavar="N",
      help="validation loss every N steps and at the end (default: 500; 0 = at the end)")
    a("--sample-every", type=nonneg_int, default=500, metavar="N",
      help="print a sample every N steps (default: 500; 0 = never)")
    a("--sample-length", type=nonneg_int, default=200, metavar="N",
      help="characters per periodic sample (default: 200)")
    a("--temperature", type=float_in(0, lo_open=True), default=0.8,
      help="softmax temperature of samples, > 0; lower is more conservative (default: 0.8)")
    a("--prime", default=None, metavar="TEXT",
      help="text samples start from (default: a newline)")
    a("--print-every", type=positive_int, default=10, metavar="N",
      help="progress line every N steps (default: 10)")
    a("--seed", type=nonneg_int, default=None,
      help="seed for init and samples (default: 0, or the --load checkpoint's)")
    a("--save", type=path_arg, default=None, metavar="PATH",
      help="checkpoint every --save-every steps, at the end and when stopped")
    a("--save-every", type=positive_int, default=500, metavar="N", help="(default: 500)")
    a("--load", type=path_arg, default=None, metavar="PATH",
      help="continue from this checkpoint: weights, optimizer, vocabulary, step and "
           "stream state (exact, on the same text and batch layout)")
    a("--sample", type=nonneg_int, default=None, metavar="N",
      help="with --load: print N generated characters after --prime and exit")
    a("--json", type=path_arg, default=None, metavar="PATH",
      help="write the run summary as JSON (- for standard output)")
    a("--plot", type=path_arg, default=None, metavar="PATH",
      help="save the loss curves (per step, smoothed, validation) as a PNG (matplotlib)")
    a("--quiet", action="store_true",
      help="no progress lines or samples (the final result is still shown)")
    a("--allow-divergence", action="store_true",
      help="train on when the smoothed loss exceeds 2 ln V, twice where it started (by "
           "default the run stops there: exit 2; a non-finite loss always stops it)")
    return p


def _limit_blas(n):
    """In-process BLAS threads. scripts/runLstm.py sets the environment before NumPy
    loads; a program calling main() directly needs threadpoolctl to change it."""
    if n is None:
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        if os.environ.get("OPENBLAS_NUM_THREADS") != str(n):
            print(f"note: --blas-threads {n} needs threadpoolctl here; BLAS keeps its "
                  f"threads", file=sys.stderr)
        return
    threadpool_limits(n)


def _check_output_dirs(args):
    check_output_paths(args, ("save", "json", "plot"), inputs=("load", "text"))
    if args.plot and args.sample is None:
        plot_format(args.plot)


def plot_text_history(hist, path):
    """Loss per step (faint), its moving average and the validation loss against the
    global step, in nats (left axis) and bits (right axis) per character."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(hist.steps, hist.loss, color="tab:blue", alpha=0.25, lw=0.8, label="train (step)")
    ax.plot(hist.steps, hist.smooth_loss, color="tab:blue", lw=1.8, label="train (smoothed)")
    if hist.val_loss:
        ax.plot(hist.val_steps, hist.val_loss, "s-", color="tab:orange", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/char)")
    lo, hi = ax.get_ylim()
    bits = ax.twinx()
    bits.set_ylim(lo / math.log(2), hi / math.log(2))
    bits.set_ylabel("bits/char")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def _prime(vocab, prime):
    """The ids of --prime (default: a newline, or the first character if the
    vocabulary has none); an unknown character is a one-line error."""
    if prime is None:
        prime = "\n" if "\n" in vocab else vocab.chars[0]
    if prime == "":
        raise UserError("--prime must not be empty")
    try:
        return prime, [int(i) for i in vocab.encode(prime)]
    except TextError as e:
        raise UserError(f"--prime {prime!r}: {e}") from None


def generate(args, out=None):
    out = sys.stdout if out is None else out
    if args.load is None:
        raise UserError("--sample generates from a checkpoint: give --load PATH")
    ck = load_text_checkpoint(args.load)
    _check_sizes(args, ck.model)
    if ck.vocab is None:
        raise UserError(f"checkpoint {args.load!r} holds no vocabulary to decode with")
    prime, ids = _prime(ck.vocab, args.prime)
    out.write(prime)

    def show(j):                       # text as it is drawn; Ctrl-C keeps what is shown
        ch = ck.vocab.decode([j])
        out.write(ch)
        if ch == "\n":
            out.flush()
    try:
        ck.model.sample(ids, args.sample, args.temperature,
                        seed=0 if args.seed is None else args.seed, on_draw=show)
    finally:
        out.write("\n")
        out.flush()
    return 0


def run_lstm(argv=None, prog=None):
    """The whole command (see the module docstring for the exit codes)."""
    parser = lstm_parser(prog or os.path.basename(sys.argv[0]))
    args = parser.parse_args(argv)
    return guarded(parser.prog, _run, args, parser.prog)


# What generating text uses; any other flag given with --sample would be ignored.
SAMPLE_FLAGS = {"load", "sample", "prime", "temperature", "seed", "hidden", "layers",
                "quiet", "max_text_mb"}


def _run(args, prog):
    _check_output_dirs(args)
    given = given_flags(args, lstm_parser(prog))
    if args.sample is not None:
        extra = sorted(given - SAMPLE_FLAGS)
        if extra:
            raise UserError("--sample generates text from --load's checkpoint; it takes "
                            "--prime, --temperature and --seed, not "
                            + ", ".join(map(flag_name, extra)))
        return generate(args)
    lock = SaveLock(args.save) if args.save else None
    try:
        return _train(args, prog, given)
    finally:
        if lock is not None:
            lock.release()


def _val_batcher(val_ids, B, T, val_fraction):
    """Validation streams: as many as the batch's, fewer if the held-out text is short."""
    if len(val_ids) == 0:
        return None
    b = min(B, len(val_ids) // (T + 1))
    if b == 0:
        raise TextError(f"the validation text ({len(val_ids)} characters, --val-fraction "
                        f"{val_fraction:g}) is too short for one sequence of {T} + 1 "
                        f"characters; lower --seq-len, raise --val-fraction, or give "
                        f"--val-fraction 0")
    return StreamBatcher(val_ids, b, T)


def _corpus(args, ck):
    """(vocab, train ids, val ids): a loaded checkpoint's vocabulary must cover the text."""
    if ck is None:
        return load_corpus(args.text, args.val_fraction, args.max_text_mb << 20)
    if ck.vocab is None:
        raise UserError(f"checkpoint {args.load!r} holds no vocabulary")
    text = read_text(args.text, args.max_text_mb << 20)
    try:
        ids = ck.vocab.encode(text)
    except TextError as e:
        raise UserError(f"{args.text!r} does not fit the checkpoint's vocabulary: {e}") from None
    tr, va = split(ids, args.val_fraction)
    return ck.vocab, tr, va


def _text_path(args, ck):
    """--text, else the text a loaded checkpoint was trained on, else tiny Shakespeare
    (which a checkpoint does not record: the repository may have moved since)."""
    if args.text is not None:
        return args.text
    if ck is None or ck.text is None:
        return DEFAULT_TEXT
    if not os.path.isfile(ck.text):
        raise UserError(f"checkpoint {args.load!r} was trained on {ck.text!r}, which no "
                        f"longer exists: give --text PATH")
    return ck.text


def _recorded_text(path):
    """What a checkpoint records of the training text: None for the bundled default."""
    try:
        return None if os.path.samefile(path, DEFAULT_TEXT) else path
    except OSError:                      # no bundled text here: nothing to compare with
        return path


def _check_sizes(args, model):
    """--hidden / --layers that contradict a loaded model: one line, not ignored."""
    for key, have in (("hidden", model.hidden_size), ("layers", model.num_layers)):
        given = getattr(args, key)
        if given is not None and given != have:
            raise UserError(f"--{key} {given}: the checkpoint's model has {have}")


def _model(args, ck, vocab, H, L):
    clip = {"clip_norm": args.clip or None, "clip_value": args.clip_value or None}
    if ck is None:
        V = len(vocab)
        check_model_size(4 * H * (V + H + 1) + (L - 1) * 4 * H * (2 * H + 1) + H * V + V,
                         np.float32, f"--hidden {H} --layers {L}")
        name = args.optimizer or DEFAULTS["optimizer"]
        opt = get_optimizer(name, lr=args.lr or DEFAULT_LR[name])
        if args.clip is None:
            clip["clip_norm"] = 5.0
        return CharLSTM(len(vocab), H, seed=args.seed, forget_bias=args.forget_bias,
                        optimizer=opt, num_layers=L, temperature=args.train_temperature or 1.0,
                        **clip)
    model = ck.model
    changed = []           # what a continuation changes is said, as runDnn.py says it
    if args.train_temperature is not None:
        if args.train_temperature != model.temperature:
            changed.append(f"--train-temperature {model.temperature:g}; continuing at "
                           f"{args.train_temperature:g}")
        model.temperature = args.train_temperature
    if args.optimizer is not None and args.optimizer != model.optimizer.name:
        raise UserError(f"--optimizer {args.optimizer}: the checkpoint was trained with "
                        f"{model.optimizer.name} (its state would not fit)")
    if args.lr is not None:
        new = as_schedule(args.lr)
        if str(new) != str(model.optimizer.schedule):
            changed.append(f"learning rate {model.optimizer.schedule}; continuing with {new}")
        model.optimizer.schedule = new
    prog = getattr(args, "prog", None) or "runLstm.py"
    for what in changed:
        print(f"{prog}: note: --load {args.load!r} was trained with {what}", file=sys.stderr)
    if args.clip is not None:
        model.clip_norm = clip["clip_norm"]
    if args.clip_value is not None:
        model.clip_value = clip["clip_value"]
    return model


def _train(args, prog, given):
    t_start = time.perf_counter()
    if json_on_stdout(args.json):            # stdout is for the JSON alone
        args.quiet = True
    ck = load_text_checkpoint(args.load) if args.load else None
    args.prog = prog                              # (for the notes of a continuation)
    vocab, train, val, model, sizes = _setup(args, ck)
    prime, _ = _prime(vocab, args.prime)          # a bad --prime fails before training
    initial_step, state, hist = 0, None, TextHistory()
    if ck is not None:
        initial_step, hist = ck.step, ck.history
        state, note = ck.resume_state(train)
        if note:
            print(f"{prog}: note: {note}", file=sys.stderr)
    steps = args.steps if args.steps is not None or args.epochs is not None else DEFAULT_STEPS
    say = (lambda *a, **k: None) if args.quiet else print
    flags = sorted(given & {"device", "update"})
    if not args.gpu and flags:
        raise UserError(" and ".join(map(flag_name, flags))
                        + (" are" if len(flags) > 1 else " is") + " for --gpu: add it, or "
                        "drop " + ("them" if len(flags) > 1 else "it"))
    if ck is not None and "forget_bias" in given:
        raise UserError("--forget-bias sets the forget gates' initial bias; --load goes on "
                        "from the checkpoint's weights: drop it")
    if args.gpu and args.workers:
        raise UserError("--gpu trains on one GPU worker: drop --workers")
    if args.gpu and args.remote_workers:
        raise UserError("--gpu trains on one GPU worker: drop --remote-workers")
    if args.remote_workers is None:
        no_remote_flags(args)
    workers = cap_workers(args.workers, sizes["batch_size"], "streams", prog) \
        if args.workers else 0
    _announce(args, prog, say, vocab, train, model, sizes, workers, initial_step)
    end = steps if steps is not None else args.epochs * len(train)
    if initial_step >= end:
        say(f"{prog}: " + (f"the checkpoint is at step {initial_step} already; "
                           if ck is not None else "") +
            "nothing to train (raise --steps or --epochs)")
    if args.gpu:
        engine = gpu_engine(args.device, update=args.update, on_failure="abort",
                            step_timeout=args.worker_timeout,
                            on_hello=device_line(prog, say))
    elif args.remote_workers:
        engine = remote_engine(args, prog, sizes["batch_size"], "streams")
    elif workers:
        engine = make_engine(workers, blas_threads=args.blas_threads or 1,
                             on_failure=args.on_failure, step_timeout=args.worker_timeout)
    else:
        _limit_blas(args.blas_threads)
        engine = make_engine(0)
    try:
        hist = fit_text(model, train, val, steps=steps, epochs=args.epochs, engine=engine,
                        seed=args.seed, eval_every=args.eval_every,
                        sample_every=args.sample_every, sample_length=args.sample_length,
                        temperature=args.temperature, vocab=vocab, prime=prime,
                        log_every=args.print_every, checkpoint=args.save,
                        save_every=args.save_every, initial_step=initial_step,
                        initial_state=state, history=hist, verbose=not args.quiet,
                        text_path=_recorded_text(args.text),
                        val_fraction=args.val_fraction,
                        divergence=None if args.allow_divergence else 2.0,
                        on_interrupt="return")       # the exit code says it: 130, ...
    except (FloatingPointError, WorkerError) as e:      # diverged; a worker failed
        if isinstance(e, WorkerError) and args.save and hist.saved_step is not None:
            print(f"{prog}: saved the weights of step {hist.saved_step} to {args.save}",
                  file=sys.stderr)
        if args.json:
            write_failure_json(args, prog, e, _progress(
                model, hist, time.perf_counter() - t_start, workers, vocab))
        raise
    finally:
        engine.close()
    _finish(args, prog, say, model, hist, vocab, workers, time.perf_counter() - t_start)
    if hist.interrupted and args.save and hist.saved_step == hist.step:
        print(f"{prog}: saved the weights of step {hist.step} to {args.save}",
              file=sys.stderr)
    return exit_code(hist)


def _setup(args, ck):
    """(vocab, train, val, model, sizes): the text, its streams and the model, from
    the flags, the checkpoint's settings where a flag is not given, else the defaults."""
    if args.seed is None:          # a continued run keeps its samples' seed
        args.seed = ck.seed if ck is not None else 0
    args.text = _text_path(args, ck)
    if args.val_fraction is None:
        args.val_fraction = ck.val_fraction if ck is not None and \
            ck.val_fraction is not None else 0.1
    vocab, tr_ids, va_ids = _corpus(args, ck)
    if ck is not None:
        _check_sizes(args, ck.model)
    size = {}
    of_model = {"hidden": "hidden_size", "layers": "num_layers"}
    for key in ("hidden", "layers", "seq_len", "batch_size"):
        given = getattr(args, key)
        have = None if ck is None else (getattr(ck.model, of_model[key]) if key in of_model
                                        else getattr(ck, key))
        size[key] = given if given is not None else (have if have is not None
                                                     else DEFAULTS[key])
    H, L, T, B = size["hidden"], size["layers"], size["seq_len"], size["batch_size"]
    train = StreamBatcher(tr_ids, B, T)
    val = _val_batcher(va_ids, B, T, args.val_fraction)
    size["n_train_chars"], size["n_val_chars"] = len(tr_ids), len(va_ids)
    return vocab, train, val, _model(args, ck, vocab, H, L), size


def _announce(args, prog, say, vocab, train, model, sizes, workers, initial_step):
    H, L, T, B = sizes["hidden"], sizes["layers"], sizes["seq_len"], sizes["batch_size"]
    say(f"{prog}: {len(vocab)} characters; {sizes['n_train_chars']:,} training / "
        f"{sizes['n_val_chars']:,} validation characters; {B} streams x {T} steps = "
        f"{len(train)} steps per epoch")
    say(f"{prog}: LSTM H={H}" + (f" x {L} layers" if L > 1 else "")
        + f", {model.n_params:,} parameters, {model.optimizer.name} "
        f"lr {model.optimizer.lr:g}, " + (f"for CUDA device {args.device}" if args.gpu else
                                          f"{args.remote_workers} remote workers"
                                          + (f" and {workers} here" if workers else "")
                                          if args.remote_workers else
                                          f"{workers} worker process"
                                          f"{'es' if workers > 1 else ''}" if workers
                                          else "in process")
        + (f", starting at step {initial_step}" if initial_step else ""))


def _finish(args, prog, say, model, hist, vocab, workers, wall):
    """The closing lines, the JSON summary and the plot."""
    train_loss = hist.recent_loss(100)
    val_loss = hist.val_loss[-1] if hist.val_loss else None
    val_step = hist.val_steps[-1] if hist.val_steps else None
    rate = hist.mean_chars_per_s
    # the result is shown with --quiet too (it hides the progress lines and samples);
    # a validation loss measured before the last step says when it was measured
    show = (lambda line: print(line, file=sys.stderr)) if json_on_stdout(args.json) else print
    if train_loss is not None:
        show(f"train loss {train_loss:.4f} nats/char ({train_loss / LN2:.4f} bits/char, "
              f"mean of the last {min(100, len(hist.loss))} steps)"
              + (f"; val loss {val_loss:.4f} nats/char ({val_loss / LN2:.4f} bits/char)"
                 + (f", measured at step {val_step}" if val_step != hist.step else "")
                 if val_loss is not None else ""))
    ready = hist.start_time           # a wait for remote workers to join, said apart
    show(f"{hist.step} steps, {rate:,.0f} chars/s training; {wall:.1f} s in all"
         + (f" ({ready:.1f} s until the workers were ready)" if ready >= 1.0 else ""))
    if args.json:
        _write_json(args, model, hist, train_loss, (val_loss, val_step), rate, wall,
                    workers, vocab)
    if args.plot:
        if hist.steps:
            plot_text_history(hist, args.plot)
        else:
            say(f"{prog}: no training step: no plot written")


def _write_json(args, model, hist, train_loss, val, rate, wall, workers, vocab):
    def per_char(v):
        return None if v is None else {"nats_per_char": v, "bits_per_char": v / math.log(2)}
    val_loss, val_step = val
    val = per_char(val_loss)
    if val is not None:
        val["step"] = val_step             # when it was measured (maybe before the last step)
    summary = {
        "train": per_char(train_loss), "val": val,
        **_progress(model, hist, wall, workers, vocab), "chars_per_second": rate,
        "interrupted": hist.interrupted, "error": None, "diverged": False,
        "args": vars(args), "platform": platform_info(),
    }
    write_json(args.json, summary)


def _progress(model, hist, wall, workers, vocab):
    """What a --json summary says of the training itself, whatever its end."""
    return {
        "train_losses": hist.loss, "train_steps": hist.steps,
        "smoothed_train_loss": hist.smooth_loss[-1] if hist.smooth_loss else None,
        "steps": hist.step, "chars": hist.chars,
        "train_seconds": hist.train_time, "wall_seconds": wall,
        "start_seconds": hist.start_time,
        "n_params": int(model.n_params),
        "vocab_size": len(vocab), "hidden": model.hidden_size,
        "layers": model.num_layers,
        "optimizer": model.optimizer.config(),
        "history": {"val_steps": hist.val_steps, "val_loss": hist.val_loss,
                    "rate_steps": hist.rate_steps, "chars_per_s": hist.chars_per_s},
        "engine": {"workers": workers, **(hist.engine_stats or {})},
    }


def main():
    """The ``runLstm`` console command (installed by pip)."""
    sys.exit(run_lstm(prog="runLstm"))
