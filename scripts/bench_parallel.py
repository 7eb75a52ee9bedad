#!/usr/bin/env python
"""Benchmark: data-parallel training on CPU worker processes against one process.

In one run (variants interleaved, medians reported -- this kind of machine is noisy):
  1. samples/s of 784-512-128-64-10 + Adam at batch 128 and 1000 for the in-process
     engine (NumPy's BLAS with all its threads) and for 1..2x cores workers with
     --blas-threads 1 each;
  2. the protocol's overhead per step: a step of a tiny model (nothing to compute)
     through the workers, minus the same step in process;
  3. memory (USS / PSS, psutil) of the coordinator and of each worker;
  4. where a step's time goes: the gradient (for workers: the slowest worker's own
     compute and the rest -- messages, wake-ups, the fold) and the optimizer update,
     which the coordinator runs serially whatever the worker count.

    python scripts/bench_parallel.py [--samples 12800] [--repeats 3] [--workers 1 2 4 8 16]

With ``--remote``: the same model and batches with 2 workers over ipc and shared
memory (local processes) beside 2 remote workers over TCP loopback, plain and CURVE
(worker processes of this machine started as ``python -m workers.remote``): samples/s,
the per-step overhead, and the bytes each step moves.

    python scripts/bench_parallel.py --remote [--samples 12800] [--repeats 3]
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from dpnet import Dense, Sequential  # noqa: E402
from dpnet.cli.common import Parser, positive_int  # noqa: E402
from dpnet.data import load_mnist  # noqa: E402
from dpnet.engines import LocalEngine  # noqa: E402
from dpnet.engines.coordinator import MultiprocessEngine, default_workers  # noqa: E402
from dpnet.optim import Adam  # noqa: E402

SIZES = [784, 512, 128, 64, 10]


def build(sizes=SIZES):
    layers = [Dense(a, b, activation="relu") for a, b in zip(sizes[:-2], sizes[1:-1])]
    layers.append(Dense(sizes[-2], sizes[-1], activation="softmax"))
    return Sequential(layers, optimizer=Adam(1e-3))


def timed_pass(engine, model, n, batch, step0, split=None):
    """Steps over n samples (a fixed shuffled order); returns (seconds, steps). With a
    ``split`` dict, also adds the seconds spent in the gradient and in the update."""
    order = np.random.default_rng(step0).permutation(n)
    t = time.perf_counter()
    step = step0
    for s in range(0, n, batch):
        t0 = time.perf_counter()
        engine.gradient(step, order[s:s + batch])
        t1 = time.perf_counter()
        model.apply_gradients()
        if split is not None:
            split["gradient"] = split.get("gradient", 0.0) + t1 - t0
            split["update"] = split.get("update", 0.0) + time.perf_counter() - t1
        step += 1
        engine.weights_changed(step)
    return time.perf_counter() - t, step - step0


def print_breakdown(variants, splits):
    """Per-step milliseconds (medians over the passes): what the step's time is made of."""
    print("\nwhere a step's time goes (ms per step, median):")
    print(f"{'engine':>12} {'batch':>6} {'step':>7} {'gradient':>9} {'slowest':>8} "
          f"{'overhead':>9} {'update':>7}")
    for b in (128, 1000):
        for name in variants:
            runs = splits[(name, b)]

            def med(key):
                vals = [r[key] for r in runs if key in r]
                return f"{float(np.median(vals)) * 1e3:.2f}" if vals else "-"
            step = float(np.median([r["gradient"] + r["update"] for r in runs])) * 1e3
            print(f"{name:>12} {b:>6} {step:>7.2f} {med('gradient'):>9} "
                  f"{med('slowest_worker'):>8} {med('overhead'):>9} {med('update'):>7}")
    print("  gradient: from sending the shards to holding the summed gradient; slowest: the\n"
          "  slowest worker's own compute; overhead: gradient - slowest (messages, wake-ups,\n"
          "  a late start, the fold); update: the optimizer step, serial in the coordinator.")


def remote_engine(workers, keys=None):
    """A coordinator over ``workers`` remote workers on TCP loopback, their processes
    started here as soon as it listens (as ssh or srun would start them elsewhere)."""
    import subprocess
    import threading
    from dpnet.engines import worker_group
    from dpnet.engines.coordinator import Coordinator
    group = worker_group("remote", workers, keys=keys, say=lambda line: None)
    procs = []

    def launch():
        while group.endpoint is None:
            time.sleep(0.01)
        for _ in range(workers):
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "workers.remote", "--connect", group.endpoint,
                 "--blas-threads", "1", "--once"] + (["--keys", keys] if keys else []),
                cwd=os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."),
                stderr=subprocess.DEVNULL))

    threading.Thread(target=launch, daemon=True).start()
    eng = Coordinator(group, start_timeout=120)
    eng.procs = procs
    return eng


def bench_remote(args):
    import tempfile
    from dpnet.parallel.keys import make_keys
    with tempfile.TemporaryDirectory(prefix="dpnet-bench-keys-") as tmp:  # secret keys
        keys = os.path.join(tmp, "keys")
        make_keys(keys)
        _bench_remote(args, keys)


def _bench_remote(args, keys):
    d = load_mnist(validation=0)
    x, y = d.x_train[:args.samples], d.y_train[:args.samples]
    variants = {"in-process": LocalEngine(),
                "ipc+shm": MultiprocessEngine(workers=2),
                "tcp": remote_engine(2),
                "tcp+CURVE": remote_engine(2, keys=keys)}
    print(f"numpy {np.__version__}; {os.cpu_count()} logical CPUs; {len(x)} samples per "
          f"pass, {args.repeats} passes per variant; 2 workers, one BLAS thread each")
    models, times, splits = {}, {}, {}
    try:
        for name, eng in variants.items():
            models[name] = build()
            eng.start(models[name], {"train": (x, y)}, seed=0)
            timed_pass(eng, models[name], WARMUP, 128, 0)              # warm-up
        step = 100
        for _ in range(args.repeats):
            for b in (128, 1000):
                for name, eng in variants.items():
                    if hasattr(eng, "step_timing"):
                        eng.step_timing(reset=True)
                    split = {}
                    t, n = timed_pass(eng, models[name], len(x), b, step, split)
                    step += n
                    times.setdefault((name, b), []).append(t)
                    split = {k: v / n for k, v in split.items()}
                    if hasattr(eng, "step_timing"):
                        split.update(eng.step_timing())
                    splits.setdefault((name, b), []).append(split)
    finally:
        for eng in variants.values():
            eng.close()
        for eng in variants.values():
            for p in getattr(eng, "procs", []):
                p.wait(10)
    n_params = models["in-process"].n_params
    print(f"\n{'engine':>12} {'batch':>6} {'samples/s':>10} {'step ms':>8} {'overhead ms':>12} "
          f"{'MB/step':>8}   (medians)")
    for b in (128, 1000):
        for name in variants:
            sps = len(x) / float(np.median(times[(name, b)]))
            runs = splits[(name, b)]
            step_ms = float(np.median([r["gradient"] + r["update"] for r in runs])) * 1e3
            over = [r["overhead"] for r in runs if "overhead" in r]
            over = f"{float(np.median(over)) * 1e3:.2f}" if over else "-"
            # what crosses the sockets per step: for TCP workers the weights to each
            # worker, each one's gradient back, and the indices; shared memory: headers
            moved = 2 * (2 * n_params * 4) + b * 8 if name.startswith("tcp") else 0
            print(f"{name:>12} {b:>6} {sps:>10,.0f} {step_ms:>8.2f} {over:>12} "
                  f"{moved / 1e6:>8.2f}")
    print("  overhead: the coordinator's gradient time minus the slowest worker's own "
          "compute\n  (messages, encryption, wake-ups, the fold); MB/step: array bytes "
          "over the\n  sockets (weights out and gradient back per worker, the indices)")


def mib(v):
    return f"{v / 2**20:7.1f}" if v else "      ?"


WARMUP = 2048          # samples of the untimed first pass


def _at_least_a_warmup(text):
    n = positive_int(text)
    if n < WARMUP:
        raise argparse.ArgumentTypeError(f"expected at least {WARMUP} (the warm-up pass), "
                                         f"got {text!r}")
    return n


def main():
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=_at_least_a_warmup, default=12_800,
                   help=f"samples per timed pass (at least {WARMUP:,}, the warm-up pass)")
    p.add_argument("--repeats", type=positive_int, default=3)
    p.add_argument("--max-workers", type=positive_int, default=None,
                   help="largest worker count (default: 2 x physical cores)")
    p.add_argument("--workers", type=positive_int, nargs="+", default=None, metavar="N",
                   help="these worker counts instead (e.g. 1 2 4 8 16 for a scaling curve)")
    p.add_argument("--remote", action="store_true",
                   help="compare local workers with remote workers over TCP (plain, CURVE)")
    args = p.parse_args()
    if args.remote:
        return bench_remote(args)
    cores = default_workers()
    counts = sorted(set(args.workers)) if args.workers else \
        list(range(1, (args.max_workers or 2 * cores) + 1))
    if 1 not in counts:
        counts = [1] + counts             # the "vs 1 worker" column needs it
    d = load_mnist(validation=0)
    x, y = d.x_train[:args.samples], d.y_train[:args.samples]
    print(f"numpy {np.__version__}; {os.cpu_count()} logical CPUs, {cores} physical cores; "
          f"{len(x)} samples per pass, {args.repeats} passes per variant")

    variants = {"in-process": LocalEngine()}
    variants.update({f"{w} worker{'s' if w > 1 else ''}": MultiprocessEngine(workers=w)
                     for w in counts})
    models = {}
    try:
        for name, eng in variants.items():
            models[name] = build()
            eng.start(models[name], {"train": (x, y)}, seed=0)
            timed_pass(eng, models[name], WARMUP, 128, 0)              # warm-up
        times = {(name, b): [] for name in variants for b in (128, 1000)}
        splits = {(name, b): [] for name in variants for b in (128, 1000)}
        step = 100
        for _ in range(args.repeats):
            for b in (128, 1000):
                for name, eng in variants.items():
                    split = {}
                    if hasattr(eng, "step_timing"):
                        eng.step_timing(reset=True)
                    t, n = timed_pass(eng, models[name], len(x), b, step, split)
                    step += n
                    times[(name, b)].append(t)
                    split = {k: v / n for k, v in split.items()}
                    if hasattr(eng, "step_timing"):
                        split.update(eng.step_timing())
                    splits[(name, b)].append(split)
        print(f"\n{'engine':>12} {'batch 128':>12} {'vs 1 worker':>12} {'batch 1000':>12} "
              f"{'vs 1 worker':>12}   (samples/s, median)")
        for name in variants:
            row = f"{name:>12}"
            for b in (128, 1000):
                sps = len(x) / float(np.median(times[(name, b)]))
                one = len(x) / float(np.median(times[("1 worker", b)]))
                row += f" {sps:>12,.0f} {sps / one:>11.2f}x"
            print(row)
        print_breakdown(variants, splits)
        shown = max(c for c in counts if c <= max(cores, 1))
        mem = variants[f"{shown} worker{'s' if shown > 1 else ''}"].stats()
        print(f"\nmemory with {shown} workers (MiB):      USS     PSS     RSS")
        c = mem["coordinator"]
        print(f"{'coordinator':>32} {mib(c['uss'])} {mib(c['pss'])} {mib(c['rss'])}")
        for w in mem["per_worker"]:
            print(f"{'worker ' + str(w['rank']):>32} {mib(w['uss'])} {mib(w['pss'])} "
                  f"{mib(w['rss'])}")
    finally:
        for eng in variants.values():
            eng.close()

    # Protocol overhead: a model with nothing to compute, the same steps in and out of process.
    tiny_x = np.zeros((64, 4), np.float32)
    tiny_y = np.zeros(64, np.int64)
    overhead = {}
    for name, eng in [("in-process", LocalEngine())] + [
            (f"{w} workers", MultiprocessEngine(workers=w))
            for w in sorted({1, min(cores, max(counts))})]:
        m = build([4, 2])
        try:
            eng.start(m, {"train": (tiny_x, tiny_y)}, seed=0)
            timed_pass(eng, m, 64, 2, 0)
            runs = []
            for r in range(5):
                t, n = 0.0, 0
                for _ in range(20):
                    dt, dn = timed_pass(eng, m, 64, 2, 1000 + r * 1000 + n)
                    t, n = t + dt, n + dn
                runs.append(t / n)
            overhead[name] = float(np.median(runs))
        finally:
            eng.close()
    base = overhead.pop("in-process")
    print(f"\nper-step time of a 4-2 model (2 samples per step): in process "
          f"{base * 1e6:.0f} us")
    for name, t in overhead.items():
        print(f"{name:>12}: {t * 1e6:.0f} us per step -> protocol overhead "
              f"{(t - base) * 1e6:.0f} us per step")


if __name__ == "__main__":
    main()
