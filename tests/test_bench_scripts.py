"""The benchmark scripts as a user starts them: each explains itself, and a value that
cannot work is one line and exit code 2 (not a traceback minutes later)."""
import subprocess
import sys

import pytest

from conftest import ROOT

SCRIPTS = ROOT / "scripts"
pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("script, flags, said", [
    ("bench_parallel.py", ["--samples", "2000"], "expected at least 2048 (the warm-up pass)"),
    ("bench_parallel.py", ["--workers", "0"], "--workers: expected a positive integer"),
    ("bench_mlp.py", ["--samples", "-5"], "--samples: expected a positive integer"),
    ("bench_augment.py", ["--batch-size", "0"], "--batch-size: expected a positive integer"),
    ("bench_lstm.py", ["--budget", "-1"], "--budget: expected a number in (0, inf)"),
    ("bench_lstm.py", ["--rounds", "0"], "--rounds: expected a positive integer"),
    ("bench_failures.py", ["--repeats", "0"], "--repeats: expected a positive integer"),
    ("bench_gpu.py", ["--device", "-1"], "--device: expected a non-negative integer"),
    ("bench_ab.py", ["--a", ".", "--rounds", "0", "bench_mlp.py"],
     "--rounds: expected a positive integer"),
])
def test_a_bad_value_is_one_line(script, flags, said):
    r = subprocess.run([sys.executable, str(SCRIPTS / script), *flags], capture_output=True,
                       text=True, timeout=100, cwd=ROOT)
    assert r.returncode == 2 and said in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("script", sorted(p.name for p in SCRIPTS.glob("bench_*.py")))
def test_each_explains_itself(script):
    r = subprocess.run([sys.executable, str(SCRIPTS / script), "--help"], capture_output=True,
                       text=True, timeout=100, cwd=ROOT)
    assert r.returncode == 0 and "usage:" in r.stdout, r.stderr
