"""CURVE keys for workers on other machines: who may join a run, and proof of who the
coordinator is.

``python -m dpnet keys DIR`` writes (ZeroMQ's certificate format, via pyzmq):

    DIR/coordinator.key         the coordinator's public key (workers need it)
    DIR/coordinator.key_secret  its secret key (stays on the coordinator's host)
    DIR/worker.key              a worker keypair's public half
    DIR/worker.key_secret       ... and its secret half (copied to the workers' hosts)
    DIR/allowed/worker.key      the public keys the coordinator lets in; add another
                                worker keypair's .key file here to allow it too

A worker proves it holds a secret key whose public half is in ``allowed/``; the
coordinator proves it holds the secret of ``coordinator.key``; everything between them
is encrypted. Secret files are written 0600 and refused when others can read them.
"""
from __future__ import annotations

import os
import stat

import zmq
import zmq.auth

COORDINATOR = "coordinator"
WORKER = "worker"
ALLOWED = "allowed"


class KeysError(ValueError):
    """A key directory that cannot be used: one line naming the file and what is wrong."""


def check_curve():
    """Raise KeysError if the installed libzmq was built without CURVE."""
    if not zmq.has("curve"):
        raise KeysError(f"the installed libzmq {zmq.zmq_version()} has no CURVE security; "
                        f"install pyzmq's own wheel (pip install --force-reinstall pyzmq)")


def make_keys(directory, workers=1):
    """Write a coordinator keypair and ``workers`` worker keypairs (``worker``, or
    ``worker-0``, ``worker-1``, ... for several) into ``directory``, and allow the
    workers' public keys. Refuses to overwrite existing keys. Returns the paths written."""
    check_curve()
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise KeysError(f"workers must be a positive integer, got {workers!r}")
    names = [WORKER] if workers == 1 else [f"{WORKER}-{i}" for i in range(workers)]
    allowed = os.path.join(directory, ALLOWED)
    for name in [COORDINATOR, *names]:
        for suffix in (".key", ".key_secret"):
            path = os.path.join(directory, name + suffix)
            if os.path.exists(path):
                raise KeysError(f"{path} exists; keys are never overwritten (use another "
                                f"directory, or remove the old keys)")
    os.makedirs(allowed, exist_ok=True)
    os.chmod(directory, 0o700)
    written = []
    old = os.umask(0o077)
    try:
        for name in [COORDINATOR, *names]:
            public, secret = zmq.auth.create_certificates(directory, name)
            os.chmod(secret, 0o600)
            written += [public, secret]
            if name != COORDINATOR:
                with open(public, "rb") as src:
                    data = src.read()
                dst = os.path.join(allowed, name + ".key")
                with open(dst, "wb") as out:
                    out.write(data)
                written.append(dst)
    finally:
        os.umask(old)
    return written


def _read(path, secret):
    if not os.path.isfile(path):
        raise KeysError(f"no key file {path} (make keys with: python -m dpnet keys DIR)")
    if secret and os.stat(path).st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeysError(f"{path} can be read by other users; chmod 600 {path}")
    try:
        public, secret_key = zmq.auth.load_certificate(path)
    except Exception as e:
        raise KeysError(f"{path} is not a ZeroMQ key file: {e}") from None
    if secret and secret_key is None:
        raise KeysError(f"{path} holds no secret key")
    return public, secret_key


def server_keys(directory):
    """The coordinator's (public, secret) key and the allowed workers' public keys
    (z85 bytes)."""
    check_curve()
    public, secret = _read(os.path.join(directory, COORDINATOR + ".key_secret"), True)
    allowed_dir = os.path.join(directory, ALLOWED)
    if not os.path.isdir(allowed_dir):
        raise KeysError(f"no {allowed_dir} directory of allowed worker keys")
    allowed = set()
    for name in sorted(os.listdir(allowed_dir)):
        if name.endswith(".key"):
            allowed.add(_read(os.path.join(allowed_dir, name), False)[0])
    if not allowed:
        raise KeysError(f"{allowed_dir} holds no worker key (*.key): no worker could join")
    return public, secret, allowed


def worker_key_name(directory):
    """The worker keypair a worker uses when none is named: ``worker``, else the only
    worker keypair in ``directory`` (a host given its own one of ``keys --workers N``);
    several: a KeysError that names them and ``--key-name``."""
    if os.path.isfile(os.path.join(directory, WORKER + ".key_secret")) or \
            not os.path.isdir(directory):
        return WORKER
    names = sorted(f[:-len(".key_secret")] for f in os.listdir(directory)
                   if f.endswith(".key_secret") and f != COORDINATOR + ".key_secret")
    if len(names) == 1:
        return names[0]
    if names:
        shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
        raise KeysError(f"{directory} holds {len(names)} worker keypairs ({shown}): "
                        f"choose this worker's with --key-name NAME")
    return WORKER


def client_keys(directory, name=None):
    """A worker's (public, secret) key and the coordinator's public key; ``name``: its
    keypair's (default: ``worker_key_name``)."""
    check_curve()
    name = worker_key_name(directory) if name is None else name
    public, secret = _read(os.path.join(directory, name + ".key_secret"), True)
    server_public = _read(os.path.join(directory, COORDINATOR + ".key"), False)[0]
    return public, secret, server_public
