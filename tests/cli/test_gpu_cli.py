"""runDnnGPU.py and runLstm.py --gpu as a user runs them, on the stand-in device where
there is no GPU: the same weights as in process, and one line for every way the GPU
can be missing or fail."""
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT

pytestmark = pytest.mark.timeout(300)


def run(script, *args, env=None, timeout=240):
    e = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DPNET_DEVICE")}
    e.update(env if env is not None else {"DPNET_DEVICE": "standin"})
    return subprocess.run([sys.executable, str(ROOT / "scripts" / script), *args],
                          capture_output=True, text=True, timeout=timeout, env=e, cwd=ROOT)


def arrays(path):
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files if k != "__meta__"}


def same_checkpoints(a, b):
    a, b = arrays(a), arrays(b)
    assert sorted(a) == sorted(b)
    for k in a:
        assert np.array_equal(a[k], b[k]), k


FLAGS = ("--limit-train", "1500", "--validation", "500", "--epochs", "2", "--hidden", "64",
         "--dropout", "0.2", "--l2", "1e-4", "--batch-size", "100", "--quiet")


@pytest.mark.parametrize("update", ["worker", "coordinator"])
def test_runDnnGPU_ends_with_runDnnDebugs_weights(tmp_path, update):
    r = run("runDnnDebug.py", *FLAGS, "--save", str(tmp_path / "cpu.npz"))
    assert r.returncode == 0, r.stderr
    r = run("runDnnGPU.py", *FLAGS, "--save", str(tmp_path / "gpu.npz"), "--update", update)
    assert r.returncode == 0, r.stderr
    same_checkpoints(tmp_path / "cpu.npz", tmp_path / "gpu.npz")


def test_runDnnGPU_names_its_device_and_reports_as_runDnn(tmp_path):
    r = run("runDnnGPU.py", "--limit-train", "1000", "--epochs", "1", "--hidden", "32",
            "--json", str(tmp_path / "run.json"))
    assert r.returncode == 0, r.stderr
    for line in ("runDnnGPU.py: a GPU worker on device 0, the optimizer on the GPU",
                 "device 0: stand-in device", "epoch   1/1", "test accuracy:",
                 "per-digit accuracy:", "execution time:", "nodes per layer: 784 -> 32 -> 10",
                 "weight shapes:", "total weights: 25,450"):
        assert line in r.stdout, line
    import json
    s = json.loads((tmp_path / "run.json").read_text())
    assert s["engine"]["kind"] == "gpu" and s["engine"]["update"] == "worker"


def test_runDnnGPU_help_has_device_flags_and_no_worker_count():
    r = run("runDnnGPU.py", "--help")
    assert r.returncode == 0 and "--device" in r.stdout and "--update" in r.stdout
    assert "--workers" not in r.stdout and "--blas-threads" not in r.stdout
    r = run("runDnnGPU.py", "--workers", "2")
    assert r.returncode == 2 and "unrecognized arguments: --workers" in r.stderr


def one_line_error(r, code, *words):
    assert r.returncode == code, (r.returncode, r.stderr)
    errors = [l for l in r.stderr.splitlines() if ": error:" in l]
    assert len(errors) == 1 and "Traceback" not in r.stderr, r.stderr
    for w in words:
        assert w in errors[0], (w, errors[0])


def test_without_cupy_one_line_says_how_to_install(tmp_path):
    (tmp_path / "sitecustomize.py").write_text("import sys\nsys.modules['cupy'] = None\n")
    for script, args in (("runDnnGPU.py", ("--limit-train", "500", "--epochs", "1")),
                         ("runLstm.py", ("--gpu", "--steps", "5"))):
        r = run(script, *args, env={"PYTHONPATH": str(tmp_path)})
        one_line_error(r, 2, "cupy is not installed", 'pip install -e ".[gpu]"')


def test_with_cupy_but_no_device_one_line_says_so():
    pytest.importorskip("cupy")
    from dpnet.backend import gpu_available
    if gpu_available():
        pytest.skip("a CUDA device is usable here")
    r = run("runDnnGPU.py", "--limit-train", "500", "--epochs", "1", env={})
    one_line_error(r, 2, "cupy is installed but no CUDA device is usable")
    assert "GPU worker on device" not in r.stdout      # said once one is up, not before


def test_data_that_does_not_fit_is_one_line_naming_the_sizes():
    r = run("runDnnGPU.py", "--epochs", "1",
            env={"DPNET_DEVICE": "standin", "DPNET_STANDIN_MEMORY": str(50 << 20)})
    one_line_error(r, 2, "the data (180 MiB)", "has 50 MiB free")


def test_a_device_error_mid_run_is_one_line_and_the_last_weights_are_saved(tmp_path):
    ck = tmp_path / "ck.npz"
    # (the fault is placed by counting device operations: 400 lands in a gradient of
    # this network without deformations; one in an update is the next test's)
    r = run("runDnnGPU.py", "--limit-train", "1000", "--epochs", "2", "--hidden", "32",
            "--save", str(ck), "--quiet", "--augment", "none",
            env={"DPNET_DEVICE": "standin", "DPNET_STANDIN_FAIL_AFTER": "400"})
    one_line_error(r, 1, "device failed", "cudaErrorIllegalAddress")
    assert "saved the last weights (step" in r.stderr
    import dpnet
    assert 0 < dpnet.load(ck).checkpoint_meta["training"]["step"] < 16


def test_a_device_error_during_an_update_saves_nothing_and_says_why(tmp_path):
    """With the default deformations, operation 400 falls inside the optimizer's update
    on the device: those weights are neither the old nor the new ones, so nothing is
    saved, and the line says so."""
    ck = tmp_path / "ck.npz"
    r = run("runDnnGPU.py", "--limit-train", "1000", "--epochs", "2", "--hidden", "32",
            "--save", str(ck), "--quiet",
            env={"DPNET_DEVICE": "standin", "DPNET_STANDIN_FAIL_AFTER": "400"})
    assert r.returncode == 1, r.stderr
    assert "could not be saved" in r.stderr and "half updated" in r.stderr, r.stderr
    assert "cudaErrorIllegalAddress" in r.stderr and "Traceback" not in r.stderr
    assert not ck.exists()


def test_runLstm_gpu_ends_with_the_in_process_weights_and_samples_anywhere(tmp_path):
    flags = ("--steps", "30", "--hidden", "32", "--eval-every", "10", "--sample-every", "0",
             "--quiet")
    r = run("runLstm.py", *flags, "--save", str(tmp_path / "cpu.npz"))
    assert r.returncode == 0, r.stderr
    r = run("runLstm.py", *flags, "--gpu", "--save", str(tmp_path / "gpu.npz"))
    assert r.returncode == 0, r.stderr
    same_checkpoints(tmp_path / "cpu.npz", tmp_path / "gpu.npz")
    # a GPU checkpoint samples with no device at all, and continues on the CPU
    r = run("runLstm.py", "--load", str(tmp_path / "gpu.npz"), "--sample", "40", env={})
    assert r.returncode == 0 and len(r.stdout) > 40, r.stderr
    r = run("runLstm.py", "--load", str(tmp_path / "gpu.npz"), "--steps", "40", "--quiet",
            env={})
    assert r.returncode == 0, r.stderr
    r = run("runLstm.py", "--gpu", "--workers", "2", "--steps", "5")
    one_line_error(r, 2, "drop --workers")


@pytest.mark.parametrize("script,flags", [
    ("runDnnGPU.py", ("--limit-train", "1000", "--epochs", "1", "--hidden", "32")),
    ("runLstm.py", ("--gpu", "--steps", "30", "--hidden", "32", "--eval-every", "10",
                    "--sample-every", "0")),
])
def test_a_gpu_worker_that_stops_answering_is_given_up_after_worker_timeout(
        tmp_path, script, flags):
    """--worker-timeout reaches the GPU engine of both front ends: a worker that hangs
    at its fourth step is named after 1 s (the default would wait 300 s, past this
    test's limit)."""
    armed = tmp_path / "armed"
    armed.touch()
    r = run(script, *flags, "--quiet", "--worker-timeout", "1",
            env={"DPNET_DEVICE": "standin",
                 "DPNET_FAULTS": f"hang_on=step,after=3,when={armed},consume=1"},
            timeout=90)
    assert not armed.exists()                                  # the fault did fire
    assert r.returncode == 1, r.stderr
    assert "did not answer within 1 s" in r.stderr and "Traceback" not in r.stderr
