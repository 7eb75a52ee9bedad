"""What one shard of a step is, per model kind -- written once, run by every engine.

A task has two sides:
- the coordinator side (class methods): which arrays to share (``shared_arrays``), how
  a step or an evaluation divides into units to shard (``plan_step``, ``plan_eval``);
- the worker side (an instance over a model whose params/grads are already bound):
  ``step(header)`` and ``evaluate(header)`` for a shard ``[start, stop)`` of those units.
The in-process engine runs the worker side itself on one shard covering everything;
the coordinator hands shards to workers of any kind. Same code, same numbers.
Tasks know nothing of sockets or shared memory: they see dicts of arrays. Which task
serves which model is ``dpnet.models.registry``'s to say.
"""
from __future__ import annotations

import numpy as np

from ..backend import to_numpy, xp_of


def stateful(task_cls):
    """``task_cls`` if its model carries state between steps (the engines' get_state /
    set_state), else a ValueError naming it."""
    if not hasattr(task_cls, "read_state"):
        raise ValueError(f"the {task_cls.name!r} task carries no state between steps")
    return task_cls


class MlpTask:
    """Minibatches of (x, y) samples. Units: positions in the step's index list (the
    step's sample indices, which the coordinator hands to each shard: in a shared
    block or as a frame). Arrays: ``<split>.x``, ``<split>.y`` per dataset."""
    name = "mlp"
    indexed = True          # a step's shards are lists of sample indices
    carried = ()            # arrays that change during training (not part of the data)

    @staticmethod
    def frames_out(arrays, header):
        """Frames a shard's STEP carries to a worker without shared memory (besides
        the indices and the weights); may set header flags."""
        return []

    @staticmethod
    def frames_back(arrays, header, frames):
        """Take what a GRAD brought back besides the gradient (see frames_out)."""

    # -- coordinator side ----------------------------------------------------------
    @staticmethod
    def shared_arrays(model, datasets):
        arrays = {}
        for split, data in datasets.items():
            x, y = data[0], data[1]       # (x, y), or (x, y, per-sample weights)
            arrays[f"{split}.x"] = np.ascontiguousarray(x, dtype=model.dtype)
            arrays[f"{split}.y"] = np.ascontiguousarray(y)
            if len(data) > 2 and data[2] is not None:
                arrays[f"{split}.w"] = np.ascontiguousarray(data[2], dtype=model.dtype)
        return arrays, {}

    @staticmethod
    def plan_step(arrays, step, batch):
        """``batch``: the sample indices of this step. Returns (units, extra header,
        the per-unit index that shards are cut from)."""
        return len(batch), {}, batch

    @staticmethod
    def plan_eval(arrays, split):
        return len(arrays[f"{split}.x"]), {}

    @staticmethod
    def expected_n(arrays, options, header):
        """The ``n`` a reply to ``header`` (a STEP or EVAL) must report."""
        return header["stop"] - header["start"]

    # -- worker side ---------------------------------------------------------------
    def __init__(self, model, arrays, seed, options=None, eval_batch_size=2048):
        self.model, self.arrays, self.seed = model, arrays, int(seed)
        self.eval_batch = int(eval_batch_size)
        self._xbuf = None

    def step(self, h, index):
        """The gradient of the shard ``index`` (its samples' positions in the data, on
        the data's device), rows ``h["start"]:h["stop"]`` of the whole step."""
        start, stop = h["start"], h["stop"]
        x, y = self.arrays["train.x"], self.arrays["train.y"]
        xp = xp_of(x)
        shape = (stop - start, x.shape[1])
        if self._xbuf is None or self._xbuf.shape != shape:
            self._xbuf = xp.empty(shape, dtype=x.dtype)
        xp.take(x, index, axis=0, out=self._xbuf)        # gather into a reused buffer
        # row0 = start: these rows get the dropout masks they have in the whole batch
        self.model.seed_step(self.seed, h["step"], row0=start)
        w = self.arrays.get("train.w")
        loss, n = self.model.loss_and_grad(self._xbuf, y[index],
                                           None if w is None else w[index])
        return loss, n, self.model.last_correct

    def evaluate(self, h):
        x, y = self.arrays[f"{h['split']}.x"], self.arrays[f"{h['split']}.y"]
        loss_sum, n_tot, correct = 0.0, 0, 0
        for s in range(h["start"], h["stop"], self.eval_batch):
            e = min(s + self.eval_batch, h["stop"])
            loss, n, c = self.model.loss_and_correct(x[s:e], y[s:e])
            loss_sum += loss * n
            n_tot += n
            correct += c
        return (loss_sum / n_tot if n_tot else 0.0), n_tot, correct


class LstmTask:
    """Truncated BPTT over B parallel character streams. Units: streams (rows).
    Arrays: ``<split>.streams`` (B, L) ids per dataset, and ``train.state``
    (2, 2, B, L*H): (h, c) of every stream (all layers), double-buffered -- chunk k reads buffer k % 2
    and writes buffer (k + 1) % 2, so re-running chunk k after a worker died mid-way
    starts from exactly the state it started from the first time."""
    name = "lstm"
    indexed = False
    carried = ("train.state",)

    @staticmethod
    def frames_out(arrays, header):
        """A training shard's rows of the state its chunk starts from."""
        if "chunk" not in header:
            return []
        rows = slice(header["start"], header["stop"])
        src = arrays["train.state"][header["chunk"] % 2]
        header["carried"] = True
        return [np.ascontiguousarray(src[0, rows]), np.ascontiguousarray(src[1, rows])]

    @staticmethod
    def frames_back(arrays, header, frames):
        """The rows of the state the chunk ended with, into the buffer the next reads."""
        rows = slice(header["start"], header["stop"])
        dst = arrays["train.state"][(header["chunk"] + 1) % 2]
        for label, d, f in (("h", dst[0, rows], frames[0]), ("c", dst[1, rows], frames[1])):
            if f.shape != d.shape or f.dtype != d.dtype:
                raise ValueError(f"stream state {label} came back as {f.dtype}{list(f.shape)}, "
                                 f"expected {d.dtype}{list(d.shape)}")
            d[...] = f

    @staticmethod
    def shared_arrays(model, datasets):
        arrays, seq_len = {}, None
        for split, batcher in datasets.items():
            arrays[f"{split}.streams"] = np.ascontiguousarray(batcher.streams)
            if split == "train":
                seq_len = batcher.seq_len
            elif batcher.seq_len != datasets["train"].seq_len:
                raise ValueError(f"{split} batches are {batcher.seq_len} steps long, "
                                 f"training batches {datasets['train'].seq_len}")
        B = arrays["train.streams"].shape[0]
        arrays["train.state"] = np.zeros((2, 2, B, model.state_size), model.dtype)
        return arrays, {"seq_len": seq_len}

    @staticmethod
    def plan_step(arrays, step, chunk):
        """``chunk``: the batch number k within the epoch (0 starts from zero state)."""
        if chunk == 0:
            arrays["train.state"][0] = 0
        return arrays["train.streams"].shape[0], {"chunk": int(chunk)}, None

    @staticmethod
    def plan_eval(arrays, split):
        return arrays[f"{split}.streams"].shape[0], {}

    @staticmethod
    def expected_n(arrays, options, header):
        """Characters predicted: T per stream and chunk of the shard's rows."""
        T, rows = int(options["seq_len"]), header["stop"] - header["start"]
        if "split" not in header:
            return rows * T
        return rows * T * ((arrays[f"{header['split']}.streams"].shape[1] - 1) // T)

    @staticmethod
    def read_state(arrays, chunk):
        """(h, c) copies of the state chunk ``chunk`` will start from: what a checkpoint
        taken between steps must hold to resume mid-epoch exactly."""
        if chunk == 0:                   # plan_step zeroes it: an epoch starts afresh
            return tuple(np.zeros_like(s) for s in arrays["train.state"][0])
        src = arrays["train.state"][chunk % 2]
        return src[0].copy(), src[1].copy()

    @staticmethod
    def write_state(arrays, chunk, state):
        """Make chunk ``chunk`` start from ``state`` (h, c), each (B, L*H). (Chunk 0
        always starts from zeros: plan_step resets its buffer.)"""
        buf = arrays["train.state"][chunk % 2]
        for label, dst, s in (("h", buf[0], state[0]), ("c", buf[1], state[1])):
            s = np.asarray(s)
            if s.shape != dst.shape:
                raise ValueError(f"stream state {label} must have shape {dst.shape}, "
                                 f"got {s.shape}")
            dst[...] = s

    def __init__(self, model, arrays, seed, options=None, eval_batch_size=None):
        self.model, self.arrays = model, arrays
        self.T = int((options or {})["seq_len"])

    def _chunk(self, streams, k, rows):
        a = k * self.T
        return streams[rows, a:a + self.T], streams[rows, a + 1:a + 1 + self.T]

    def step(self, h, index=None):
        rows, k = slice(h["start"], h["stop"]), int(h["chunk"])
        x, y = self._chunk(self.arrays["train.streams"], k, rows)
        state = self.arrays["train.state"]
        src, dst = state[k % 2], state[(k + 1) % 2]
        # the state lives in host memory (shared with the coordinator); a model on a
        # device takes it up and hands the new one back down explicitly
        loss, n, (h_new, c_new) = self.model.loss_and_grad(x, y, (src[0, rows], src[1, rows]))
        dst[0, rows] = to_numpy(h_new)
        dst[1, rows] = to_numpy(c_new)
        return loss, n, 0

    def evaluate(self, h):
        """Rows [start, stop) of a split through all its chunks, state from zero."""
        streams = self.arrays[f"{h['split']}.streams"]
        rows = slice(h["start"], h["stop"])
        n_chunks = (streams.shape[1] - 1) // self.T
        state, total, n_tot = None, 0.0, 0
        for k in range(n_chunks):
            x, y = self._chunk(streams, k, rows)
            loss, n, state = self.model.predict_loss(x, y, state)
            total += loss * n
            n_tot += n
        return (total / n_tot if n_tot else 0.0), n_tot, 0
