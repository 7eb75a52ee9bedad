"""A CPU worker: ``python -m dpnet.workers.cpu_worker -`` (its JSON config on stdin).

Started by the coordinator's CPU worker group (``dpnet.engines.cpu``) as a fresh
interpreter (spawn semantics: nothing inherited but the environment and the JSON
config; never pickled). It is the serve loop (``dpnet.workers.serve``) over a binding to the
coordinator's shared memory: data, weights, the step's indices and its gradient slot.

A local worker's ``model.params`` IS the shared weight block and its ``model.grads``
IS its shared gradient slot: a step reads the weights in place and writes the
gradient in place, and only a small msgpack header crosses ZeroMQ.
"""
from __future__ import annotations

import sys


class SharedMemoryBinding:
    """Everything in the coordinator's shared memory, attached in place."""

    def __init__(self, cfg):
        from dpnet.models.registry import model_from_config, task_by_name
        from dpnet.parallel.protocol import signature_of
        from dpnet.parallel.shm import SharedArray

        self.rank = int(cfg["rank"])
        self.shm = {k: SharedArray.attach_described(d) for k, d in cfg["shm"].items()}
        self.arrays = {k: s.array for k, s in self.shm.items()}
        # The model's weights ARE the shared weight block; its gradient IS this rank's slot.
        self.model = model_from_config(cfg["model"])
        self.model.rebind(params=self.arrays["weights"], grads=self.arrays["grads"][self.rank])
        self.signature = signature_of(self.model)
        self.task = task_by_name(cfg["task"])(self.model, self.arrays, int(cfg["seed"]),
                                              cfg.get("task_options"),
                                              int(cfg.get("eval_batch_size", 2048)))

    def use_weights(self, h, arrays):
        have = int(self.arrays["version"][0])
        if have != h["weights_version"]:
            raise RuntimeError(f"weights in shared memory are version {have}, "
                               f"the coordinator asked for {h['weights_version']}")

    def index(self, h, arrays):
        return self.arrays["index"][h["start"]:h["stop"]] if "index" in self.arrays else None

    def gradient_reply(self, h, loss):
        scale = h.get("scale", 1.0)
        if scale != 1.0:          # this shard's weight in the batch mean (see the coordinator)
            self.arrays["grads"][self.rank] *= scale
        return {"grad_in_shm": True}, ()

    def extra(self, msg):
        return None               # WELCOME / SYNC / HEARTBEAT need no answer here

    def close(self):
        for s in self.shm.values():
            s.close()


def main(argv=None):
    from .serve import main as serve_main
    return serve_main(sys.argv[1:] if argv is None else argv, "dpnet.workers.cpu_worker",
                      SharedMemoryBinding)


if __name__ == "__main__":
    sys.exit(main())
