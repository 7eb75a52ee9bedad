"""A coordinator for tests/engines/test_remote_hosts.py, run inside its own network
namespace: it trains the small MLP of tests/engines/test_remote.py with remote
workers listening on every address (CURVE keys), and, with ``--cut-link LINK``,
takes that veth link down after the first epoch and up again after the third,
waiting for the worker behind it to rejoin. Writes the weights and what happened
to OUT.npz / OUT.json.

    python tests/remote_coordinator.py KEYS PORT OUT [--cut-link LINK]
"""
import argparse
import json
import subprocess
import sys

import numpy as np


def main():
    p = argparse.ArgumentParser()
    p.add_argument("keys")
    p.add_argument("port", type=int)
    p.add_argument("out")
    p.add_argument("--cut-link", default=None)
    p.add_argument("--epochs", type=int, default=3)
    args = p.parse_args()

    from dpnet.engines import worker_group
    from dpnet.engines.coordinator import Coordinator
    sys.path.insert(0, "tests/engines")
    from test_remote import data, mlp, rounds_until

    group = worker_group("remote", 2, listen=f"tcp://0.0.0.0:{args.port}", keys=args.keys)
    eng = Coordinator(group, start_timeout=60, silence_timeout=1.0)
    events = []

    def cut(epoch, metrics):
        if args.cut_link is None:
            return False
        if epoch == 1:
            subprocess.run(["ip", "link", "set", args.cut_link, "down"], check=True)
            events.append("down")
        elif epoch == 3:
            events.append(f"respawns={eng.respawns}")
            subprocess.run(["ip", "link", "set", args.cut_link, "up"], check=True)
            back = rounds_until(eng, lambda: all(eng._ready.values()))
            events.append("rejoined" if back else "not back")
        return False

    x, y = data()
    with eng:
        m = mlp()
        m.fit(x, y, epochs=args.epochs, batch_size=50, validation_data=(x[:200], y[:200]),
              engine=eng, verbose=0, callbacks=[cut])
        stats = eng.stats()
    np.savez(args.out + ".npz", params=m.params)
    with open(args.out + ".json", "w") as f:
        json.dump({"events": events, "respawns": eng.respawns,
                   "stale_replies": stats["stale_replies"],
                   "hosts": sorted({w["host"] for w in stats["per_worker"]})}, f)


if __name__ == "__main__":
    main()
