#!/usr/bin/env python
"""Benchmark the GPU worker (says so and exits 0 where there is no CUDA GPU).

In one run, medians of interleaved rounds:
  1. MLP 784-512-128-64-10 + Adam on MNIST at batch 128, 1000 and 4096: samples/s
     with the optimizer on the GPU ("worker") and in the coordinator
     ("coordinator": the gradient comes home and the weights go back every step),
     beside the in-process CPU engine with 2 BLAS threads (this project's 2-core
     baseline) and with all of them; where a GPU step's time goes (the worker's own
     compute vs messages and transfers) and what one host<->device copy of the
     weight vector costs;
  2. end to end: ``runDnnGPU.py --epochs 10 --batch-size 1000`` as a user runs it
     (interpreter start, MNIST, CUDA start, training, the test report);
  3. character LSTM (T=64, B=32, tiny Shakespeare) at H=256 and 512: chars/s on the
     GPU with the fused cell kernels and without (DPNET_FUSE=0), beside the CPU in
     process with 2 BLAS threads.

    python scripts/bench_gpu.py [--rounds 3] [--device 0] [--skip-e2e]
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

from dpnet import Dense, Sequential  # noqa: E402
from dpnet.cli.common import Parser, nonneg_int, positive_int  # noqa: E402
from dpnet.backend import gpu_available  # noqa: E402
from dpnet.engines import LocalEngine, gpu_engine  # noqa: E402
from dpnet.optim import Adam  # noqa: E402

SIZES = [784, 512, 128, 64, 10]


def mlp():
    layers = [Dense(a, b, activation="relu") for a, b in zip(SIZES[:-2], SIZES[1:-1])]
    layers.append(Dense(SIZES[-2], SIZES[-1], activation="softmax"))
    return Sequential(layers, optimizer=Adam(1e-3))


def blas_threads(n):
    """A context that runs NumPy's BLAS on ``n`` threads (all of them for None)."""
    import contextlib
    if n is None:
        return contextlib.nullcontext()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        print("   (threadpoolctl missing: the CPU rows use every BLAS thread)")
        return contextlib.nullcontext()
    return threadpool_limits(n)


def timed_steps(engine, n, batch, step0, n_samples):
    """Seconds for the training steps over ``n_samples`` samples of a fixed order."""
    order = np.random.default_rng(step0).permutation(n)[:n_samples]
    t = time.perf_counter()
    step = step0
    for s in range(0, len(order), batch):
        engine.step(step, order[s:s + batch])
        step += 1
    engine.sync_to_host()                  # the weights home: the run is really done
    return time.perf_counter() - t, step


def mlp_part(x, y, rounds, device):
    print("\n1. MLP 784-512-128-64-10 + Adam, samples/s (median of "
          f"{rounds} rounds; each round {len(x):,} samples per variant)")
    variants = {"gpu, update on gpu": ("gpu", "worker"),
                "gpu, update in coord.": ("gpu", "coordinator"),
                "cpu in process, 2 thr": ("cpu", 2)}
    if (os.cpu_count() or 2) > 2:
        variants[f"cpu in process, {os.cpu_count()} thr"] = ("cpu", None)
    results = {(v, b): [] for v in variants for b in (128, 1000, 4096)}
    timing = {}
    engines, models = {}, {}
    try:
        for name, (kind, arg) in variants.items():
            models[name] = mlp()
            engines[name] = gpu_engine(device, update=arg) if kind == "gpu" else LocalEngine()
            engines[name].start(models[name], {"train": (x, y)}, seed=0)
            timed_steps(engines[name], len(x), 1000, 0, 4000)         # warm-up, compile
        step = 1000
        for _ in range(rounds):
            for b in (128, 1000, 4096):
                for name, (kind, arg) in variants.items():
                    eng = engines[name]
                    if hasattr(eng, "step_timing"):
                        eng.step_timing(reset=True)
                    with blas_threads(arg if kind == "cpu" else None):
                        t, step = timed_steps(eng, len(x), b, step, len(x))
                    results[(name, b)].append(len(x) / t)
                    if hasattr(eng, "step_timing"):
                        timing.setdefault((name, b), []).append(eng.step_timing())
    finally:
        for eng in engines.values():
            eng.close()
    print(f"{'variant':>24} {'batch 128':>11} {'batch 1000':>11} {'batch 4096':>11}")
    for name in variants:
        print(f"{name:>24}" + "".join(
            f" {statistics.median(results[(name, b)]):>11,.0f}" for b in (128, 1000, 4096)))
    print("\nwhere a GPU step's time goes (ms per step, median): step = the coordinator's "
          "wall time\nper step; worker = the GPU worker's own compute (gradient, and the "
          "update when on the GPU);\nrest = messages, the frames' copies, wake-ups")
    print(f"{'variant':>24} {'batch':>6} {'step':>8} {'worker':>8} {'rest':>8}")
    for name in [v for v in variants if v.startswith("gpu")]:
        for b in (128, 1000, 4096):
            ts = timing.get((name, b), [])
            if not ts:
                continue
            med = lambda k: statistics.median(t[k] for t in ts) * 1e3       # noqa: E731
            print(f"{name:>24} {b:>6} {med('gradient'):>8.3f} {med('slowest_worker'):>8.3f}"
                  f" {med('overhead'):>8.3f}")
    return results


def transfer_part(device):
    from dpnet.backend import device_xp, synchronize
    cp = device_xp(device)
    w = mlp().params
    d = cp.asarray(w)
    reps = 200
    for label, fn in (("host -> device", lambda: cp.asarray(w)),
                      ("device -> host", lambda: cp.asnumpy(d))):
        fn()
        synchronize(cp)
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        synchronize(cp)
        print(f"   one copy of the {w.nbytes / 2**20:.2f} MiB weight vector {label}: "
              f"{(time.perf_counter() - t) / reps * 1e6:.0f} us")


def e2e_part(device):
    print("\n2. end to end: runDnnGPU.py --epochs 10 --batch-size 1000 (wall seconds, "
          "interpreter start to the last line)")
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "run.json")
        cmd = [sys.executable, os.path.join(HERE, "runDnnGPU.py"), "--epochs", "10",
               "--batch-size", "1000", "--device", str(device), "--json", out, "--quiet"]
        for attempt in ("first (kernels compiled)", "second (kernels cached)"):
            t = time.perf_counter()
            r = subprocess.run(cmd, capture_output=True, text=True)
            wall = time.perf_counter() - t
            if r.returncode:
                print(f"   failed: {r.stderr.strip()}")
                return
            s = json.load(open(out))
            print(f"   {attempt}: {wall:.2f} s in all, {s['train_seconds']:.2f} s "
                  f"training, test accuracy {s['test']['accuracy'] * 100:.2f}%")


def lstm_rate(engine_kind, H, steps, device, fuse=True):
    from dpnet.cli.lstm import DEFAULT_FORGET_BIAS
    from dpnet.data.text import StreamBatcher, load_corpus
    from dpnet.models.lstm import CharLSTM
    from dpnet.training import fit_text
    vocab, tr, _ = load_corpus(os.path.join(HERE, "..", "data", "tinyshakespeare",
                                            "input.txt"), 0.1)
    train = StreamBatcher(tr, 32, 64)
    m = CharLSTM(len(vocab), H, forget_bias=DEFAULT_FORGET_BIAS, optimizer=Adam(2e-3),
                 clip_norm=5.0)
    os.environ["DPNET_FUSE"] = "1" if fuse else "0"      # read by the GPU worker
    try:
        engine = gpu_engine(device) if engine_kind == "gpu" else LocalEngine()
        # the first 4 steps warm up (kernels compiled, buffers made); then a rate per
        # 4 steps, of which the median
        h = fit_text(m, train, steps=4 + steps, engine=engine, eval_every=0,
                     sample_every=0, log_every=4, verbose=False)
        engine.close()
    finally:
        os.environ.pop("DPNET_FUSE", None)
    return statistics.median(h.chars_per_s[1:])


def lstm_part(rounds, device):
    print("\n3. character LSTM, T=64 B=32, chars/s (median of "
          f"{rounds} rounds)")
    print(f"{'H':>5} {'gpu fused':>11} {'gpu unfused':>12} {'cpu 2 thr':>11} "
          f"{'fused/cpu':>10}")
    for H in (256, 512):
        rates = {"fused": [], "unfused": [], "cpu": []}
        for _ in range(rounds):
            rates["fused"].append(lstm_rate("gpu", H, 40, device, fuse=True))
            rates["unfused"].append(lstm_rate("gpu", H, 40, device, fuse=False))
            with blas_threads(2):
                rates["cpu"].append(lstm_rate("cpu", H, 8 if H == 512 else 16, device))
        med = {k: statistics.median(v) for k, v in rates.items()}
        print(f"{H:>5} {med['fused']:>11,.0f} {med['unfused']:>12,.0f} {med['cpu']:>11,.0f} "
              f"{med['fused'] / med['cpu']:>9.1f}x")


def main():
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=positive_int, default=3)
    p.add_argument("--device", type=nonneg_int, default=0)
    p.add_argument("--samples", type=positive_int, default=20_000,
                   help="MLP samples per timed pass")
    p.add_argument("--skip-e2e", action="store_true")
    args = p.parse_args()
    if not gpu_available() and os.environ.get("DPNET_DEVICE") != "standin":
        print("bench_gpu.py: no CUDA GPU here (cupy missing or no usable device): "
              "nothing to measure")
        return 0
    if os.environ.get("DPNET_DEVICE") == "standin":
        print("bench_gpu.py: on the stand-in device (NumPy): a dry run of this script, "
              "its figures mean nothing")
    from dpnet.backend import device_info, device_xp
    info = device_info(device_xp(args.device), args.device)
    print(f"device {args.device}: {info['name']}, {info['memory_total'] / 2**30:.1f} GiB; "
          f"numpy {np.__version__}; {os.cpu_count()} CPUs")
    from dpnet.data import load_mnist
    d = load_mnist(validation=0)
    mlp_part(d.x_train[:args.samples], d.y_train[:args.samples], args.rounds, args.device)
    transfer_part(args.device)
    if not args.skip_e2e:
        e2e_part(args.device)
    lstm_part(args.rounds, args.device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
