#!/usr/bin/env python
"""Benchmark: what deforming the training images costs beside the step it feeds.

In one process, interleaved and repeated (medians): the default network's training step
(784-512-128-64-10, Adam, forward + backward + update) at a batch size, and the same
batch deformed by ``Deform`` -- affine, and affine + elastic -- per batch and per image.
The ratio deform / step is what --augment adds to an in-process run; with N workers
each deforms only its shard, in parallel.

    python scripts/bench_augment.py [--batch-size 128] [--repeats 50] [--threads 1]
"""
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from dpnet.cli.common import Parser, positive_int  # noqa: E402


def main():
    ap = Parser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch-size", type=positive_int, default=128)
    ap.add_argument("--repeats", type=positive_int, default=50)
    ap.add_argument("--threads", type=positive_int, default=1,
                    help="BLAS threads for the step (default 1: as one worker has)")
    args = ap.parse_args()
    from threadpoolctl import threadpool_limits

    from dpnet import Deform, Dense, Sequential
    from dpnet.data import load_mnist
    from dpnet.nn.rng import mix_key

    d = load_mnist(validation=0, limit_train=args.batch_size)
    x, y = d.x_train, d.y_train
    model = Sequential([Dense(784, 512, activation="relu"), Dense(512, 128, activation="relu"),
                        Dense(128, 64, activation="relu"), Dense(64, 10, activation="softmax")])
    affine, elastic = Deform(kind="affine"), Deform(kind="elastic")

    def step(i):
        model.seed_step(0, i)
        model.loss_and_grad(x, y)
        model.apply_gradients()

    cases = {"step": step,
             "affine": lambda i: affine.forward(x, key=mix_key(0, i, 0), training=True),
             "elastic": lambda i: elastic.forward(x, key=mix_key(0, i, 0), training=True)}
    times = {k: [] for k in cases}
    with threadpool_limits(args.threads):
        for i in range(args.repeats + 3):
            for name, fn in cases.items():
                t0 = time.perf_counter()
                fn(i)
                if i >= 3:                               # the first few warm up
                    times[name].append(time.perf_counter() - t0)
    med = {k: float(np.median(v)) * 1000 for k, v in times.items()}
    print(f"batch {args.batch_size}, {args.threads} BLAS thread(s), median of "
          f"{args.repeats}:")
    print(f"{'':10s}{'ms/batch':>10s}{'us/image':>10s}{'x step':>8s}")
    for name in cases:
        print(f"{name:10s}{med[name]:10.2f}{med[name] * 1000 / args.batch_size:10.1f}"
              f"{med[name] / med['step']:8.2f}")


if __name__ == "__main__":
    main()
