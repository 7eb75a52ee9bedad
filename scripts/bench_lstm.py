#!/usr/bin/env python
"""Benchmark: character-LSTM training on tiny Shakespeare, dpnet against PyTorch's CPU LSTM.

In one run (variants interleaved, medians reported -- this kind of machine is noisy):
  1. training throughput in characters/s (forward + BPTT + clip + Adam step) for
     H = 256 and 512, T = 64, B = 32: dpnet in process (NumPy's BLAS with the threads it
     has), dpnet over 2 worker processes (1 BLAS thread each), and -- if torch imports --
     torch.nn.LSTM + Linear + cross-entropy + backward + Adam with torch's threads set
     to the same count as NumPy's BLAS; then the ratio dpnet / torch;
     plus "GEMMs alone": the matrix products one dpnet step must do (the recurrent
     (B, H) @ (H, 4H) forward and (B, 4H) @ (4H, H) backward products of every time
     step, dWh, dWx, the output layer), timed bare with the same BLAS -- the ceiling
     on chars/s for this design in NumPy, whatever the element-wise work costs;
  2. the validation loss (nats and bits per character) reached after --budget seconds
     of training at H = 256 (Adam 2e-3, clip 5, forget bias 0: the runLstm.py
     defaults), for dpnet in process and, if torch imports, for torch with the same
     settings (torch's own initialization).

    python scripts/bench_lstm.py [--budget 180] [--rounds 5] [--steps 10] [--settle 1]
                                 [--no-torch]
"""
import math
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from dpnet.cli.lstm import DEFAULT_FORGET_BIAS  # noqa: E402
from dpnet.cli.common import Parser, float_in, positive_int  # noqa: E402
from dpnet.data.text import StreamBatcher, load_corpus  # noqa: E402
from dpnet.engines.coordinator import MultiprocessEngine  # noqa: E402
from dpnet.models.lstm import CharLSTM  # noqa: E402
from dpnet.optim import Adam  # noqa: E402
from dpnet.training import fit_text  # noqa: E402

TEXT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data",
                    "tinyshakespeare", "input.txt")
T, B, LR, CLIP = 64, 32, 2e-3, 5.0


def blas_threads():
    try:
        from threadpoolctl import threadpool_info
        return max((i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"),
                   default=os.cpu_count())
    except ImportError:
        return int(os.environ.get("OPENBLAS_NUM_THREADS", os.cpu_count() or 1))


# -- dpnet variants --------------------------------------------------------------------
class DpnetLocal:
    """loss_and_grad + apply_gradients in this process, state carried chunk to chunk."""

    def __init__(self, V, H, train):
        self.m = CharLSTM(V, H, optimizer=Adam(LR), clip_norm=CLIP)
        self.train, self.state, self.k = train, None, 0

    def steps(self, n):
        for _ in range(n):
            x, y = self.train.batch(self.k % len(self.train))
            _, _, self.state = self.m.loss_and_grad(x, y, self.state)
            self.m.apply_gradients()
            self.k += 1

    def close(self):
        pass


class DpnetWorkers:
    """The same step through MultiprocessEngine: streams sharded over the workers."""

    def __init__(self, V, H, train, workers=2):
        self.m = CharLSTM(V, H, optimizer=Adam(LR), clip_norm=CLIP)
        self.n = len(train)
        self.eng = MultiprocessEngine(workers=workers, blas_threads=1)
        self.eng.start(self.m, {"train": train})
        self.step = 0

    def steps(self, n):
        for _ in range(n):
            self.eng.gradient(self.step, self.step % self.n)
            self.m.apply_gradients()
            self.step += 1
            self.eng.weights_changed(self.step)

    def close(self):
        self.eng.close()


class GemmsAlone:
    """Only the matrix products of one training step, on contiguous buffers."""

    def __init__(self, V, H, train=None):
        rng = np.random.default_rng(0)
        N = T * B

        def r(*shape):
            return rng.standard_normal(shape).astype(np.float32) * 0.1
        self.h, self.Wh, self.WhT, self.g4 = r(B, H), r(H, 4 * H), r(4 * H, H), r(B, 4 * H)
        self.o4, self.o1 = r(B, 4 * H), r(B, H)
        self.HsT, self.G, self.dWh = r(H, N), r(N, 4 * H), r(H, 4 * H)
        self.oh, self.dWx = r(V, N), r(V, 4 * H)
        self.Hs, self.Wy, self.Z, self.dWy = r(N, H), r(H, V), r(N, V), r(H, V)
        self.WyT, self.dH = r(V, H), r(N, H)

    def steps(self, n):
        mm = np.matmul
        for _ in range(n):
            for _t in range(T):
                mm(self.h, self.Wh, out=self.o4)          # forward recurrence
            for _t in range(T - 1):
                mm(self.g4, self.WhT, out=self.o1)        # backward recurrence
            mm(self.HsT, self.G, out=self.dWh)
            mm(self.oh, self.G, out=self.dWx)             # one-hot scatter as a GEMM
            mm(self.Hs, self.Wy, out=self.Z)
            mm(self.HsT, self.Z, out=self.dWy)
            mm(self.Z, self.WyT, out=self.dH)

    def close(self):
        pass


# -- torch variant ---------------------------------------------------------------------
def torch_or_none():
    try:
        import torch
        return torch
    except ImportError:
        return None


class TorchLSTM:
    """torch.nn.LSTM (one-hot input, as dpnet's) + Linear + cross-entropy + backward +
    clip_grad_norm_ + Adam, state carried (detached) chunk to chunk."""

    def __init__(self, torch, V, H, train):
        self.torch, self.V = torch, V
        torch.manual_seed(0)
        self.lstm = torch.nn.LSTM(V, H)                  # time-major (T, B, V)
        self.out = torch.nn.Linear(H, V)
        self.params = list(self.lstm.parameters()) + list(self.out.parameters())
        self.opt = torch.optim.Adam(self.params, lr=LR)
        self.streams = torch.from_numpy(np.ascontiguousarray(train.streams).astype(np.int64))
        self.n, self.state, self.k = len(train), None, 0

    def chunk(self, streams, k):
        a = k * T
        return streams[:, a:a + T].T, streams[:, a + 1:a + 1 + T].T   # (T, B)

    def loss(self, x, y, state):
        F = self.torch.nn.functional
        h, state = self.lstm(F.one_hot(x, self.V).float(), state)
        logits = self.out(h)                            # (T, B, V)
        return F.cross_entropy(logits.reshape(-1, self.V), y.reshape(-1)), state

    def steps(self, n):
        for _ in range(n):
            k = self.k % self.n
            if k == 0:
                self.state = None
            x, y = self.chunk(self.streams, k)
            loss, st = self.loss(x, y, self.state)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.torch.nn.utils.clip_grad_norm_(self.params, CLIP)
            self.opt.step()
            self.state = tuple(s.detach() for s in st)
            self.k += 1
        return float(loss.detach())

    def evaluate(self, val):
        streams = self.torch.from_numpy(np.ascontiguousarray(val.streams).astype(np.int64))
        total, state = 0.0, None
        with self.torch.no_grad():
            for k in range(len(val)):
                loss, state = self.loss(*self.chunk(streams, k), state)
                total += float(loss)
        return total / len(val)

    def close(self):
        pass


# -- 1. throughput ---------------------------------------------------------------------
def throughput(vocab, train, args, torch):
    rows = []
    for H in (256, 512):
        variants = {"dpnet in process": DpnetLocal(len(vocab), H, train),
                    "dpnet 2 workers": DpnetWorkers(len(vocab), H, train),
                    "GEMMs alone": GemmsAlone(len(vocab), H)}
        if torch is not None:
            variants["torch nn.LSTM"] = TorchLSTM(torch, len(vocab), H, train)
        rates = {name: [] for name in variants}
        try:
            for v in variants.values():
                v.steps(3)                               # warm-up: buffers, caches, threads
            for _ in range(args.rounds):
                for name, v in variants.items():         # interleaved: noise hits all alike
                    # Idle first: OpenBLAS's and OpenMP's threads spin for a while after
                    # their last call and would steal cores from the next variant --
                    # measured here, interleaving without this pause cut torch's rate
                    # from ~78k to ~53k chars/s at H=256.
                    time.sleep(args.settle)
                    t0 = time.perf_counter()
                    v.steps(args.steps)
                    rates[name].append(args.steps * B * T / (time.perf_counter() - t0))
        finally:
            for v in variants.values():
                v.close()
        for name, r in rates.items():
            rows.append((H, name, statistics.median(r), min(r), max(r)))
    print(f"\n1. training throughput, T={T} B={B}, medians of {args.rounds} rounds x "
          f"{args.steps} steps (chars/s)")
    print(f"{'H':>4}  {'variant':<18} {'median':>9} {'min':>9} {'max':>9}  {'vs torch':>8}")
    for H, name, med, lo, hi in rows:
        ref = [r[2] for r in rows if r[0] == H and r[1].startswith("torch")]
        ratio = f"{med / ref[0]:.2f}x" if ref else "-"
        print(f"{H:>4}  {name:<18} {med:>9,.0f} {lo:>9,.0f} {hi:>9,.0f}  {ratio:>8}")


# -- 2. loss after a wall-clock budget -------------------------------------------------
def budget_run(vocab, train, val, args, torch):
    print(f"\n2. validation loss after {args.budget:g} s of training, H=256 (evaluation "
          f"not counted)")
    print(f"{'variant':<18} {'steps':>6} {'epochs':>6} {'val nats/char':>14} "
          f"{'val bits/char':>14}")
    m = CharLSTM(len(vocab), 256, optimizer=Adam(LR), clip_norm=CLIP,
                 forget_bias=DEFAULT_FORGET_BIAS)
    t_end = time.monotonic() + args.budget

    def out_of_time(step, rec):
        return time.monotonic() >= t_end

    h = fit_text(m, train, val, steps=10 ** 9, eval_every=0, sample_every=0, log_every=1,
                 verbose=False, callbacks=[out_of_time])
    vl = h.val_loss[-1]
    print(f"{'dpnet in process':<18} {h.step:>6} {h.step / len(train):>6.2f} {vl:>14.4f} "
          f"{vl / math.log(2):>14.4f}")
    if torch is not None and not args.no_torch_budget:
        tm = TorchLSTM(torch, len(vocab), 256, train)
        t_stop = time.monotonic() + args.budget
        while time.monotonic() < t_stop:
            tm.steps(1)
        vl = tm.evaluate(val)
        print(f"{'torch nn.LSTM':<18} {tm.k:>6} {tm.k / len(train):>6.2f} {vl:>14.4f} "
              f"{vl / math.log(2):>14.4f}")


def main():
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=float_in(0, lo_open=True), default=180.0,
                   help="seconds of training for the loss-after-budget part (default: 180)")
    p.add_argument("--rounds", type=positive_int, default=5,
                   help="interleaved rounds (default: 5)")
    p.add_argument("--steps", type=positive_int, default=10,
                   help="steps per round (default: 10)")
    p.add_argument("--settle", type=float_in(0), default=1.0,
                   help="seconds idle before each timed round (default: 1)")
    p.add_argument("--no-torch", action="store_true", help="skip torch even if installed")
    p.add_argument("--no-torch-budget", action="store_true",
                   help="time torch's throughput but skip its budget run")
    p.add_argument("--skip-budget", action="store_true", help="throughput only")
    args = p.parse_args()
    torch = None if args.no_torch else torch_or_none()
    threads = blas_threads()
    if torch is not None:
        torch.set_num_threads(threads)
    vocab, tr, va = load_corpus(TEXT)
    train, val = StreamBatcher(tr, B, T), StreamBatcher(va, B, T)
    print(f"numpy {np.__version__} ({threads} BLAS threads in process); "
          + (f"torch {torch.__version__} ({torch.get_num_threads()} threads)"
             if torch is not None else "torch not installed")
          + f"; {os.cpu_count()} logical CPUs; V={len(vocab)}, {len(tr):,} training chars")
    throughput(vocab, train, args, torch)
    if not args.skip_budget:
        budget_run(vocab, train, val, args, torch)


if __name__ == "__main__":
    main()
