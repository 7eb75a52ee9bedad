"""A CPU worker: ``python -m workers.cpu_worker CONFIG_JSON``.

Started by ``dpnet.engines.multiprocess`` as a fresh interpreter (spawn semantics:
nothing inherited but the environment and the JSON config; never pickled). It
attaches to the coordinator's shared memory (data, weights, its gradient slot),
introduces itself with HELLO, then serves STEP and EVAL messages until STOP, or until
its coordinator disappears.

A local worker's ``model.params`` IS the shared weight block and its ``model.grads``
IS its shared gradient slot: a step reads the weights in place and writes the
gradient in place, and only a small msgpack header crosses ZeroMQ.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time
import traceback


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m workers.cpu_worker CONFIG_JSON", file=sys.stderr)
        return 2
    cfg = json.loads(argv[0])
    # Ctrl-C in a terminal, and SIGTERM from systemd, `timeout` or `kill -- -PGID`, reach
    # the whole process group; only the coordinator decides what they mean (a clean
    # stop, not a crashed worker). It stops workers with STOP, or SIGKILL after 2 s,
    # and a worker whose coordinator is gone exits by itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # A diverging run is the coordinator's to report (a non-finite loss, one line),
    # not a stream of overflow warnings from every worker.
    import numpy as np
    np.seterr(over="ignore", invalid="ignore", divide="ignore")
    return Worker(cfg).run()


class Worker:
    def __init__(self, cfg):
        from dpnet.parallel import protocol
        from dpnet.parallel.shm import SharedArray
        from dpnet.parallel.transport import CoordinatorWatch, Dealer, Ticker

        from dpnet.engines.tasks import signature_of, task_by_name
        from dpnet.models import model_from_config

        self.cfg = cfg
        self.rank = int(cfg["rank"])
        self.protocol = protocol
        self.watch = CoordinatorWatch(parent_pid=int(cfg["coordinator_pid"]))
        self.ticker = Ticker()
        self.shm = {k: SharedArray.attach_described(d) for k, d in cfg["shm"].items()}
        self.arrays = {k: s.array for k, s in self.shm.items()}
        # The model's weights ARE the shared weight block; its gradient IS this rank's slot.
        model = model_from_config(cfg["model"])
        model.rebind(params=self.arrays["weights"], grads=self.arrays["grads"][self.rank])
        self.signature = signature_of(model)
        self.task = task_by_name(cfg["task"])(model, self.arrays, int(cfg["seed"]),
                                              cfg.get("task_options"),
                                              int(cfg.get("eval_batch_size", 2048)))
        self.sock = Dealer(cfg["endpoint"], self.rank)

    def run(self):
        P = self.protocol
        self.sock.send(P.HELLO, {"rank": self.rank, "pid": os.getpid(),
                                 "signature": self.signature})
        reason = "stopped"
        try:
            while True:
                lost = self.watch.lost()          # checked every pass, message or not
                if lost:
                    reason = lost
                    return 0
                try:
                    msg = self.sock.recv_valid(min(self.ticker.remaining(), 0.5))
                except Exception:                 # the socket itself failed: give up
                    reason = "socket error"
                    return 1
                if msg is None:
                    if self.ticker.due():
                        self.sock.send(P.HEARTBEAT, {"rank": self.rank, "busy": False})
                    continue
                self.watch.saw_message()
                if msg.kind == P.STOP:
                    return 0
                if msg.kind in (P.STEP, P.EVAL):
                    self._serve(msg)
                # WELCOME / SYNC / HEARTBEAT need no answer from a local worker
        finally:
            try:
                self.sock.send(P.BYE, {"rank": self.rank, "reason": reason})
            except Exception:
                pass
            self.sock.close()
            for s in self.shm.values():
                s.close()

    def _serve(self, msg):
        P, h = self.protocol, msg.header
        t0 = time.perf_counter()
        try:
            have = int(self.arrays["version"][0])
            if have != h["weights_version"]:
                raise RuntimeError(f"weights in shared memory are version {have}, "
                                   f"the coordinator asked for {h['weights_version']}")
            if msg.kind == P.STEP:
                loss, n, correct = self.task.step(h)
                scale = h.get("scale", 1.0)
                if scale != 1.0:      # this shard's weight in the batch mean (see engine)
                    self.arrays["grads"][self.rank] *= scale
                reply = (P.GRAD, {"step": h["step"], "rank": self.rank, "n": n,
                                  "loss": float(loss), "correct": int(correct),
                                  "grad_in_shm": True,
                                  "seconds": time.perf_counter() - t0})
            else:
                loss, n, correct = self.task.evaluate(h)
                reply = (P.EVAL_RESULT, {"step": h["step"], "rank": self.rank, "n": n,
                                         "loss": float(loss), "correct": int(correct),
                                         "seconds": time.perf_counter() - t0})
        except Exception as e:
            self.sock.send(P.ERROR, {"rank": self.rank, "step": int(h.get("step", 0)),
                                     "message": f"{type(e).__name__}: {e}",
                                     "traceback": traceback.format_exc()})
            return
        self.sock.send(*reply)


if __name__ == "__main__":
    sys.exit(main())
