"""Remote workers placed, started and restarted by Ray (``runDnn.py --cluster ray``).

Ray does only that: each worker is a Ray actor (spread over the cluster's nodes) whose
process runs the ordinary remote worker (``dpnet.workers.remote_worker.run``) in a
thread; it joins the coordinator over dpnet's own ZeroMQ sockets like any worker
started by hand, and the gradients and weights never pass through Ray. An actor that
dies -- its process killed, its node lost -- is restarted by Ray (``max_restarts=-1``),
and the new worker joins again and takes the free rank at the next step.

Keys: the launcher makes a fresh CURVE keypair for the coordinator and one for the
workers for this run only (no key directory to copy around), lets in only that worker
key, and hands it to the actors as their constructor's arguments. On a local Ray
(no address) the coordinator listens on loopback; on a cluster, on every address.
"""
from __future__ import annotations

import threading

try:
    import ray
except ImportError:                        # the optional extra "cluster"
    ray = None


def _require_ray():
    if ray is None:
        raise ValueError("--cluster ray needs Ray: pip install -e \".[cluster]\"")
    return ray


class _Worker:
    """The actor's body: one remote worker in a thread of the actor's process."""

    def __init__(self, endpoint, curve, wait_s):
        import argparse
        import numpy as np
        from dpnet.workers.remote_worker import run
        np.seterr(over="ignore", invalid="ignore", divide="ignore")
        args = argparse.Namespace(connect=endpoint, data=None, wait=float(wait_s), once=False)
        curve = None if curve is None else tuple(curve)
        self.code = None

        def body():
            self.code = run(args, curve, prog="dpnet ray worker")

        self.thread = threading.Thread(target=body, name="dpnet-worker", daemon=True)
        self.thread.start()

    def pid(self):
        import os
        return os.getpid()

    def node(self):
        return ray.get_runtime_context().get_node_id()

    def wait(self, timeout_s=None):
        """The worker's exit code once it has ended (None: still running)."""
        self.thread.join(timeout_s)
        return self.code


class RayLauncher:
    """Starts ``group.size`` worker actors once the group listens; ``address``: a Ray
    cluster to join (None: start a local one, shut down again at the end)."""

    def __init__(self, address=None, blas_threads=1, wait_s=120.0):
        _require_ray()
        self.address, self.blas_threads, self.wait_s = address, int(blas_threads), wait_s
        self.actors = []
        self._started_ray = False

    def listen_address(self):
        """Where the coordinator must listen for these workers to reach it."""
        return "tcp://127.0.0.1:0" if self.address is None else "tcp://0.0.0.0:0"

    def keys(self):
        """(the coordinator's CURVE keys and allowed set, the workers' keys) for this run."""
        import zmq
        from ..parallel.keys import check_curve
        check_curve()
        server_public, server_secret = zmq.curve_keypair()
        public, secret = zmq.curve_keypair()
        return (server_public, server_secret, {public}), (public, secret, server_public)

    def start(self, group, worker_curve):
        if not ray.is_initialized():
            if self.address is None:
                ray.init(include_dashboard=False, log_to_driver=False)
            else:
                ray.init(address=self.address, log_to_driver=False)
            self._started_ray = True
        from ..parallel.transport import split_tcp
        host, port = split_tcp(group.endpoint)
        if host in ("0.0.0.0", "*"):
            host = ray.util.get_node_ip_address()
        endpoint = f"tcp://{host}:{port}"
        from .group import blas_env
        env = blas_env(self.blas_threads)
        actor = ray.remote(_Worker).options(
            max_restarts=-1, max_task_retries=-1, num_cpus=1,
            scheduling_strategy="SPREAD", runtime_env={"env_vars": env})
        self.actors = [actor.remote(endpoint, worker_curve, self.wait_s)
                       for _ in range(group.size)]

    def stop(self):
        """End the actors (their workers have had STOP), and a Ray this started."""
        for a in self.actors:
            try:
                ray.kill(a, no_restart=True)
            except Exception:
                pass
        self.actors = []
        if self._started_ray:
            ray.shutdown()
            self._started_ray = False
