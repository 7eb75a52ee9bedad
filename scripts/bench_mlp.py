#!/usr/bin/env python
"""Benchmark: how close one process's MLP training comes to the FLOP floor.

Measures, in one run (variants interleaved, medians reported, since this kind of
machine is noisy):
  1. numpy's float32 matmul rate, on a square GEMM and on the network's own GEMMs;
  2. training throughput (forward + backward + Adam update, samples/s) of
     784-512-128-64-10 on MNIST at batch 128 and 1000, with the time split between
     gradient and optimizer step;
  3. the ratio of the measured epoch time to the FLOP lower bound
     6 x params x samples / (measured matmul rate).

    python scripts/bench_mlp.py [--samples 20000] [--repeats 5]
"""
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from dpnet import Dense, Sequential  # noqa: E402
from dpnet.cli.common import Parser, positive_int  # noqa: E402
from dpnet.data import load_mnist  # noqa: E402
from dpnet.optim import Adam  # noqa: E402

SIZES = [784, 512, 128, 64, 10]


def median_time(fn, repeats):
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


def gemm_rate_square(n=1024, repeats=7):
    a = np.random.default_rng(0).random((n, n), dtype=np.float32)
    b = a.copy()
    out = np.empty_like(a)
    np.matmul(a, b, out=out)
    return 2 * n ** 3 / median_time(lambda: np.matmul(a, b, out=out), repeats) / 1e9


def gemm_rate_network(batch, repeats=7):
    """The 3 GEMMs per layer of one training step (forward, dW, dx), as the model does them."""
    rng = np.random.default_rng(0)
    mats = []
    for n_in, n_out in zip(SIZES, SIZES[1:]):
        x = rng.random((batch, n_in), dtype=np.float32)
        W = rng.random((n_in, n_out), dtype=np.float32)
        dz = rng.random((batch, n_out), dtype=np.float32)
        mats.append((x, W, dz, np.empty((batch, n_out), np.float32),
                     np.empty((n_in, n_out), np.float32), np.empty((batch, n_in), np.float32)))

    def step():
        for x, W, dz, z, dW, dx in mats:
            np.matmul(x, W, out=z)
            np.matmul(x.T, dz, out=dW)
            np.matmul(dz, W.T, out=dx)

    step()
    flops = sum(6 * batch * a * b for a, b in zip(SIZES, SIZES[1:]))
    return flops / median_time(step, repeats) / 1e9


def build(threads=None):
    layers = [Dense(a, b, activation="relu") for a, b in zip(SIZES[:-2], SIZES[1:-1])]
    layers.append(Dense(SIZES[-2], SIZES[-1], activation="softmax"))
    return Sequential(layers, optimizer=Adam(1e-3, threads=threads))


def train_pass(model, x, y, batch):
    """One pass over (x, y) in shuffled batches; returns (seconds, grad s, update s)."""
    order = np.random.default_rng(0).permutation(len(x))
    t_grad = t_upd = 0.0
    buf = None
    t0 = time.perf_counter()
    for s in range(0, len(x), batch):
        idx = order[s:s + batch]
        if buf is None or buf.shape[0] != len(idx):
            buf = np.empty((len(idx), x.shape[1]), np.float32)
        t = time.perf_counter()
        np.take(x, idx, axis=0, out=buf)
        model.loss_and_grad(buf, y[idx])
        t2 = time.perf_counter()
        model.apply_gradients()
        t3 = time.perf_counter()
        t_grad += t2 - t
        t_upd += t3 - t2
    return time.perf_counter() - t0, t_grad, t_upd


def main():
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=positive_int, default=20_000,
                   help="samples per timed pass")
    p.add_argument("--repeats", type=positive_int, default=5)
    args = p.parse_args()
    try:
        from threadpoolctl import threadpool_info
        blas = ", ".join(f"{i['internal_api']} {i.get('version')} {i['num_threads']} threads "
                         f"({i.get('architecture')})" for i in threadpool_info()
                         if i["user_api"] == "blas")
    except ImportError:
        blas = "threadpoolctl not installed"
    print(f"numpy {np.__version__}; BLAS: {blas}; {os.cpu_count()} CPUs")

    d = load_mnist(validation=0)
    x, y = d.x_train[:args.samples], d.y_train[:args.samples]
    model = build()
    n_params = model.n_params
    sq, net = [], {128: [], 1000: []}
    res = {(b, th): [] for b in (128, 1000) for th in ("pool", 1)}
    # the optimizer update with a thread per CPU, against one thread (the default)
    models = {th: build(threads=os.cpu_count() if th == "pool" else 1) for th in ("pool", 1)}
    for m in models.values():
        train_pass(m, x[:2000], y[:2000], 128)                 # warm-up: buffers, pool
    for r in range(args.repeats):                              # interleave every variant
        sq.append(gemm_rate_square())
        for b in (128, 1000):
            net[b].append(gemm_rate_network(b))
            for th, m in models.items():
                res[(b, th)].append(train_pass(m, x, y, b))
    rate_sq = float(np.median(sq))
    print(f"\nfloat32 matmul, 1024^3 square: {rate_sq:.1f} GFLOP/s")
    print(f"parameters: {n_params:,}; FLOP per sample (fwd+bwd) ~ 6 x params = "
          f"{6 * n_params / 1e6:.2f} MFLOP\n")
    print(f"{'batch':>6} {'optimizer':>12} {'samples/s':>10} {'grad ms/step':>13} "
          f"{'update ms/step':>15} {'net GEMM GF/s':>14} {'epoch/bound':>12} {'(square)':>9}")
    for b in (128, 1000):
        rate_net = float(np.median(net[b]))
        steps = -(-len(x) // b)
        for th in ("pool", 1):
            runs = res[(b, th)]
            t = float(np.median([r[0] for r in runs]))
            g = float(np.median([r[1] for r in runs])) / steps * 1e3
            u = float(np.median([r[2] for r in runs])) / steps * 1e3
            bound = 6 * n_params * len(x) / (rate_net * 1e9)
            bound_sq = 6 * n_params * len(x) / (rate_sq * 1e9)
            label = f"{os.cpu_count()} threads" if th == "pool" else "1 thread"
            print(f"{b:>6} {label:>12} {len(x) / t:>10,.0f} {g:>13.2f} {u:>15.2f} "
                  f"{rate_net:>14.1f} {t / bound:>12.2f} {t / bound_sq:>9.2f}")
    print("\nepoch/bound: measured time / (6 x params x samples / the network's own GEMM rate "
          "at that batch size); (square): the same against the square GEMM's rate")


if __name__ == "__main__":
    main()
