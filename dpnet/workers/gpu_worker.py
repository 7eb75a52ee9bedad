"""The GPU worker: ``python -m dpnet.workers.gpu_worker -`` (its JSON config on stdin).

Started by the coordinator's GPU worker group (``dpnet.engines.gpu``): the only process
of a run that imports cupy and initializes CUDA. It is the serve loop
(``dpnet.workers.serve``) over a binding to one CUDA device:

- the data: attached from the coordinator's shared memory once, uploaded to the device,
  and let go on the host side (the LSTM's carried stream state stays in shared memory,
  double-buffered, so a re-run chunk and a checkpoint see it as with CPU workers);
- each STEP brings its shard's sample indices as a raw frame, and the weights as a raw
  frame whenever they changed;
- the gradient goes back to the coordinator as a raw frame (the coordinator's optimizer
  applies it), or -- with ``update`` -- the worker applies the model's optimizer on the
  device itself, its state on the device, and only scalars cross per step; the
  coordinator PULLs the weights and optimizer state when it needs them (evaluation
  reports, checkpoints, the end) and PUSHes them at the start.

With ``DPNET_DEVICE=standin`` the device is ``dpnet.strictdevice`` (NumPy under CuPy's
host/device rules): the same code, on machines without a GPU.
"""
from __future__ import annotations

import math
import sys

from .serve import FrameWeights

# The device's memory a run leaves free for activations, the allocator's pool and
# CUDA's own: data and model must fit in the rest.
HEADROOM = 0.1


class UserFacing(Exception):
    """A problem with what was asked (no usable device, too little memory): the
    coordinator reports it in one line, as a user error."""


class DeviceBinding(FrameWeights):
    """Weights, gradient and data on one CUDA device."""

    def __init__(self, cfg):
        from dpnet.backend import DeviceError, device_errors, device_info, device_xp
        from dpnet.models.registry import model_from_config, task_by_name
        from dpnet.parallel.protocol import signature_of
        from dpnet.parallel.shm import SharedArray

        self.rank, index = int(cfg["rank"]), int(cfg.get("device", 0))
        try:
            self.xp = xp = device_xp(index)
        except DeviceError as e:
            raise UserFacing(str(e)) from None
        self.info = device_info(xp, index)
        self.device_errors = device_errors(xp)
        shm = {k: SharedArray.attach_described(d) for k, d in cfg["shm"].items()}
        self.model = model_from_config(cfg["model"], xp=xp)
        self._check_fits(shm)
        # Data to the device once; what the coordinator writes between steps (the
        # stream state, the version stamp) stays in shared memory.
        self.host = {k: s for k, s in shm.items() if k in ("train.state", "version")}
        self.arrays = {k: s.array for k, s in self.host.items()}
        for k, s in shm.items():
            if k not in self.host:
                self.arrays[k] = xp.asarray(s.array)
                s.close()
        self.signature = signature_of(self.model)
        self.task = task_by_name(cfg["task"])(self.model, self.arrays, int(cfg["seed"]),
                                              cfg.get("task_options"),
                                              int(cfg.get("eval_batch_size", 2048)))
        self.version = None           # the weights this device holds (None: none yet)
        self.intact = True            # False while an update is half applied

    def _check_fits(self, shm):
        data = sum(s.array.nbytes for k, s in shm.items()
                   if k not in ("train.state", "version"))
        # params, gradient, two optimizer moments, and the gradient's host copy
        model = 4 * self.model.params.nbytes
        free = self.info["memory_free"] * (1 - HEADROOM)
        if data + model > free:
            mib = lambda b: f"{b / 2**20:,.0f} MiB"            # noqa: E731
            raise UserFacing(
                f"the data ({mib(data)}) and the model ({mib(model)}: weights, gradient "
                f"and optimizer state) need {mib(data + model)} on {self.info['name']}, "
                f"which has {mib(self.info['memory_free'])} free of "
                f"{mib(self.info['memory_total'])}; use fewer training samples "
                f"(--limit-train) or a smaller model")

    def hello(self):
        return {"device": self.info}

    # -- the serve loop's questions -------------------------------------------------
    def put_weights(self, a):
        self.model.params[...] = self.xp.asarray(a)

    def index(self, h, arrays):
        if h.get("indices", False):
            return self.xp.asarray(arrays[0])
        return None

    def gradient_reply(self, h, loss):
        g = self.model.grads
        if h.get("update", False):
            if not math.isfinite(loss):          # the coordinator reports the divergence
                return {"updated": False}, (self.xp.asnumpy(g),)
            self.intact = False
            self.model.apply_gradients()         # L2, clipping, the optimizer: on device
            self.intact = True
            self.version = h["step"] + 1
            return {"updated": True}, ()
        scale = h.get("scale", 1.0)
        if scale != 1.0:                         # this shard's weight in the batch mean
            g *= scale
        return {}, (self.xp.asnumpy(g),)

    def extra(self, msg):
        from dpnet.parallel import protocol as P
        if msg.kind == P.PUSH:
            return self._push(msg.header, msg.arrays)
        if msg.kind == P.PULL:
            return self._pull(msg.header)
        return None

    def _push(self, h, arrays):
        """Weights and optimizer state from the coordinator (the start of a run)."""
        from dpnet.optim.optimizers import optimizer_from_config
        self.model.optimizer = opt = optimizer_from_config(h["optimizer"])
        self.model.params[...] = self.xp.asarray(arrays[0])
        opt.t = h["t"]
        opt.state = ({k: self.xp.asarray(a) for k, a in zip(opt.state_names, arrays[1:])}
                     if h.get("state", False) else {})
        self.version = h["weights_version"]
        self.intact = True
        return None

    def _pull(self, h):
        from dpnet.parallel import protocol as P
        if not self.intact:
            raise RuntimeError("the weights on the device were half updated when an error "
                               "struck; they are lost")
        opt = self.model.optimizer
        frames = [self.xp.asnumpy(self.model.params)]
        has_state = bool(opt.state)
        if has_state:
            frames += [self.xp.asnumpy(opt.state[k]) for k in opt.state_names]
        return (P.STATE, {"rank": self.rank, "weights_version": int(self.version or 0),
                          "t": int(opt.t), "state": has_state}, *frames)

    def close(self):
        for s in self.host.values():
            s.close()


def main(argv=None):
    from .serve import main as serve_main
    return serve_main(sys.argv[1:] if argv is None else argv, "dpnet.workers.gpu_worker",
                      DeviceBinding, user_errors=(UserFacing,))


if __name__ == "__main__":
    sys.exit(main())
