#!/usr/bin/env bash
# The checks that need a machine with an NVIDIA GPU (and many cores): the gpu-marked
# tests, the GPU benchmark, and the data-parallel scaling curve. Logs go to $1 (default:
# ./gpu-check). Run from the repository root with dpnet's dependencies and cupy installed:
#   bash scripts/gpu_check.sh [LOG_DIR]
set -uo pipefail
out=${1:-gpu-check}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import sys, numpy, cupy, zmq; print(sys.version.split()[0], 'numpy', numpy.__version__, 'cupy', cupy.__version__, 'pyzmq', zmq.__version__)"
  nproc
} 2>&1 | tee "$out/machine.txt"
timeout 150 python3 -m pytest -m gpu -p no:cacheprovider -q -rs tests/engines/test_gpu_real.py 2>&1 | tee "$out/gpu_tests.txt"
timeout 240 python3 scripts/bench_gpu.py --rounds 2 2>&1 | tee "$out/bench_gpu.txt"
timeout 160 python3 scripts/bench_parallel.py --repeats 1 --workers 1 2 4 8 16 2>&1 | tee "$out/bench_parallel.txt"
