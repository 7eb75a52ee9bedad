"""``python -m dpnet COMMAND``: tools that work wherever dpnet is installed.

    python -m dpnet mnist [FLAGS]        = runDnn (scripts/runDnn.py): CPU worker processes
    python -m dpnet debug [FLAGS]        = runDnnDebug: in this one process
    python -m dpnet gpu [FLAGS]          = runDnnGPU: a GPU worker
    python -m dpnet lstm [FLAGS]         = runLstm: the character LSTM
    python -m dpnet worker [FLAGS]       = dpnet-worker: a worker for a run on another machine
    python -m dpnet clean [--dry-run]    remove what dead runs left in shared memory
    python -m dpnet keys DIR [--workers N]
                                         CURVE keys for workers on other machines
"""
from __future__ import annotations

import sys


def _run(command, argv):
    """The training commands, with their own parsers and flags."""
    prog = f"python -m dpnet {command}"
    if command == "lstm":
        from .cli.lstm import run_lstm
        return run_lstm(argv, prog=prog)
    if command == "worker":
        from .workers.remote_worker import main as worker_main
        return worker_main(argv, prog=prog)
    from .cli.mnist import run_dnn
    if command == "mnist":
        from .engines.coordinator import default_workers
        return run_dnn(argv, prog=prog, workers_flag=True, default_workers=default_workers())
    return run_dnn(argv, prog=prog, gpu=command == "gpu")


COMMANDS = ("mnist", "debug", "gpu", "lstm", "worker")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in COMMANDS:
        return _run(argv[0], argv[1:])
    from .cli.common import Parser       # a mistake is one line, as in every command
    p = Parser(prog="python -m dpnet", description=__doc__.splitlines()[0],
                                epilog="commands: " + ", ".join(COMMANDS) + ", clean, keys "
                                       "(python -m dpnet COMMAND --help)")
    sub = p.add_subparsers(dest="command", required=True)
    for name in COMMANDS:                  # listed for --help; dispatched above
        sub.add_parser(name, help=f"train: see python -m dpnet {name} --help",
                       add_help=False)
    c = sub.add_parser("clean", help="remove the shared-memory segments and socket "
                                     "directories of runs whose process is gone")
    c.add_argument("--dry-run", action="store_true", help="list them, remove nothing")
    k = sub.add_parser("keys", help="write CURVE keys for remote workers: the "
                                    "coordinator's keypair, worker keypairs, and allowed/ "
                                    "(the worker public keys the coordinator lets in)")
    k.add_argument("dir", metavar="DIR")
    k.add_argument("--workers", type=int, default=1, metavar="N",
                   help="worker keypairs to make (default: 1, shared by all workers)")
    args = p.parse_args(argv)
    if args.command == "keys":
        from .parallel.keys import KeysError, make_keys
        try:
            written = make_keys(args.dir, workers=args.workers)
        except (KeysError, OSError) as e:
            print(f"python -m dpnet keys: error: {e}", file=sys.stderr)
            return 2
        for path in written:
            print(path)
        print(f"copy {args.dir} without coordinator.key_secret to each worker's host; "
              f"the coordinator needs coordinator.key_secret and allowed/")
        return 0
    if args.command == "clean":
        from .parallel.cleanup import describe, sweep
        report = sweep(dry_run=args.dry_run)
        for name, size in report["segments"]:
            print(f"/dev/shm/{name}  {size / 2**20:,.1f} MiB")
        for path in report["dirs"]:
            print(f"{path}/")
        print(describe(report, args.dry_run) or "nothing left behind by dead runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
