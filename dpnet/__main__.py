"""``python -m dpnet COMMAND``: tools that work wherever dpnet is installed.

    python -m dpnet clean [--dry-run]    remove what dead runs left in shared memory
"""
from __future__ import annotations

import argparse
import sys


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m dpnet", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("clean", help="remove the shared-memory segments and socket "
                                     "directories of runs whose process is gone")
    c.add_argument("--dry-run", action="store_true", help="list them, remove nothing")
    args = p.parse_args(argv)
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
