#!/usr/bin/env python
"""Benchmark two checkouts against each other: run a benchmark script of each in turn
(A, B, A, B, ...), so that both see the same machine load, and report the median of
every number of every table row, with B/A.

    python scripts/bench_ab.py --a /path/to/old/checkout [--b .] [--rounds 3] \\
        -- bench_parallel.py --repeats 1 --max-workers 2

The script is looked up in each checkout's scripts/ folder and run there with that
checkout's dpnet (the scripts put their own checkout first on sys.path). A row is a
line of the output that holds numbers; rows are matched between runs by their text
with the numbers taken out, so the tables must have the same shape in both trees.
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import time

NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?")


def rows(output):
    """{row label: [numbers]} for every line that has numbers, label = the line with
    its numbers blanked (numbered when a label repeats)."""
    found, seen = {}, {}
    for line in output.splitlines():
        nums = NUMBER.findall(line)
        if not nums:
            continue
        label = " ".join(NUMBER.sub("#", line).split())
        seen[label] = seen.get(label, 0) + 1
        key = label if seen[label] == 1 else f"{label} ({seen[label]})"
        found[key] = [float(n.replace(",", "")) for n in nums]
    return found


def run(tree, script, args):
    path = os.path.join(tree, "scripts", script)
    if not os.path.isfile(path):
        sys.exit(f"bench_ab.py: error: {path} does not exist")
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, path, *args], cwd=tree, env=env,
                         capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"bench_ab.py: error: {path} exited with {out.returncode}:\n{out.stderr}")
    return out.stdout, time.perf_counter() - t0


def _positive(text):
    """(this script runs other checkouts' dpnet: it imports none itself)"""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return n


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--a", required=True, help="the baseline checkout")
    p.add_argument("--b", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."),
                   help="the checkout to compare (default: this one)")
    p.add_argument("--rounds", type=_positive, default=3)
    p.add_argument("script", help="a script in scripts/, e.g. bench_parallel.py")
    p.add_argument("args", nargs=argparse.REMAINDER)
    args = p.parse_args()
    results = {"a": [], "b": []}
    for r in range(args.rounds):
        for side in ("a", "b"):
            out, secs = run(getattr(args, side), args.script, args.args)
            results[side].append(rows(out))
            print(f"round {r + 1}: {side.upper()} ran in {secs:.0f} s", file=sys.stderr)
    labels = [k for k in results["a"][-1] if k in results["b"][-1]]
    print(f"{args.script} {' '.join(args.args)}: medians of {args.rounds} runs each, "
          f"A = {os.path.abspath(args.a)}, B = {os.path.abspath(args.b)}")
    for label in labels:
        def med(side):
            runs = [r[label] for r in results[side] if label in r]
            width = min(len(x) for x in runs)
            return [statistics.median(x[i] for x in runs) for i in range(width)]
        a, b = med("a"), med("b")
        cells = "  ".join(f"{x:g}/{y:g}={y / x:.2f}" if x else f"{x:g}/{y:g}"
                          for x, y in zip(a, b))
        print(f"{label[:60]:<60}  {cells}")


if __name__ == "__main__":
    main()
