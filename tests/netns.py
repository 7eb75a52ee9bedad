"""Test "hosts": Linux network namespaces joined by veth pairs (root only).

``Hosts(n_workers)`` makes a coordinator namespace and one namespace per worker, each
worker joined to the coordinator by its own veth pair on its own /24 of the
benchmarking range 198.18.0.0/15 (coordinator side 198.18.<i>.1, worker 198.18.<i>.2),
and removes all of it on ``close()`` (deleting a namespace deletes its veth ends).
Traffic goes only to these test hosts and loopback.
"""
import os
import subprocess


def _ip(*args, ns=None):
    cmd = (["ip", "netns", "exec", ns] if ns else []) + ["ip", *args]
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=30)


def can_make_namespaces():
    """None if namespaces can be made here, else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    name = f"dpprobe{os.getpid()}"
    try:
        _ip("netns", "add", name)
        _ip("netns", "del", name)
    except (OSError, subprocess.SubprocessError) as e:
        return f"cannot make a network namespace here: {e}"
    return None


class Hosts:
    def __init__(self, n_workers):
        tag = f"{os.getpid() % 100000}"
        self.coordinator = f"dpc{tag}"
        self.workers = [f"dpw{tag}x{i}" for i in range(n_workers)]
        self.links = [f"vc{tag}x{i}" for i in range(n_workers)]    # coordinator ends
        self.made = []
        try:
            for ns in [self.coordinator, *self.workers]:
                _ip("netns", "add", ns)
                self.made.append(ns)
                _ip("link", "set", "lo", "up", ns=ns)
            for i, (ns, link) in enumerate(zip(self.workers, self.links), start=1):
                peer = f"vw{tag}x{i - 1}"
                _ip("link", "add", link, "type", "veth", "peer", "name", peer)
                _ip("link", "set", link, "netns", self.coordinator)
                _ip("link", "set", peer, "netns", ns)
                _ip("addr", "add", f"198.18.{i}.1/24", "dev", link, ns=self.coordinator)
                _ip("addr", "add", f"198.18.{i}.2/24", "dev", peer, ns=ns)
                _ip("link", "set", link, "up", ns=self.coordinator)
                _ip("link", "set", peer, "up", ns=ns)
        except BaseException:
            self.close()
            raise

    def coordinator_address(self, i):
        """The coordinator's address as worker ``i`` reaches it."""
        return f"198.18.{i + 1}.1"

    def link(self, i, up):
        """Take worker ``i``'s link down or bring it up (the coordinator's end)."""
        _ip("link", "set", self.links[i], "up" if up else "down", ns=self.coordinator)

    def slow(self, i, rate):
        """Shape what the coordinator sends worker ``i`` to ``rate`` (tc's token bucket,
        e.g. "1mbit"); gone with the namespace."""
        subprocess.run(["ip", "netns", "exec", self.coordinator, "tc", "qdisc", "add",
                        "dev", self.links[i], "root", "tbf", "rate", rate, "burst", "32kbit",
                        "latency", "400ms"], check=True, capture_output=True, text=True,
                       timeout=30)

    def run(self, ns, cmd):
        """``cmd`` (a list) as run inside namespace ``ns``."""
        return ["ip", "netns", "exec", ns, *cmd]

    def close(self):
        for ns in self.made:
            try:
                _ip("netns", "del", ns)
            except (OSError, subprocess.SubprocessError):
                pass
        self.made = []
