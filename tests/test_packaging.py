"""dpnet installed as a package, not run from a checkout: a wheel built from this tree,
installed into a fresh virtual environment, used from another directory -- the bundled
data found, the console commands and worker processes working, and no stray top-level
module installed beside dpnet."""
import os
import site
import subprocess
import sys
import sysconfig
import zipfile

import pytest

from conftest import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(venv bin directory, a directory outside the checkout, the wheel's path)."""
    tmp = tmp_path_factory.mktemp("wheel")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", str(ROOT),
                        "-w", str(tmp / "dist")], capture_output=True, text=True, timeout=300)
    if r.returncode:
        pytest.fail(f"building the wheel failed:\n{r.stderr[-2000:]}")
    wheel = next((tmp / "dist").glob("dpnet-*.whl"))
    subprocess.run([sys.executable, "-m", "venv", str(tmp / "venv")], check=True, timeout=120)
    bindir = tmp / "venv" / "bin"
    subprocess.run([str(bindir / "python"), "-m", "pip", "install", "-q", "--no-deps",
                    str(wheel)], check=True, timeout=300, capture_output=True)
    # dpnet's dependencies come from this test's environment, appended after the fresh
    # environment's own site-packages (a .pth line: the dev install's own .pth files,
    # which would bring the checkout's dpnet, are not run from there)
    purelib = subprocess.run([str(bindir / "python"), "-c",
                              "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    deps = sorted({p for p in site.getsitepackages() + [sysconfig.get_paths()["purelib"]]
                   if os.path.isdir(p)})
    with open(os.path.join(purelib, "zz_dpnet_test_deps.pth"), "w") as f:
        f.write("\n".join(deps) + "\n")
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    return bindir, elsewhere, wheel


def run(installed, *cmd, timeout=300):
    bindir, elsewhere, _ = installed
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DPNET_DATA")}
    env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"
    r = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout,
                       cwd=elsewhere, env=env)
    assert r.returncode == 0, (cmd, r.stdout[-2000:], r.stderr[-2000:])
    return r


def test_the_wheel_holds_dpnet_and_its_data_and_nothing_else(installed):
    names = zipfile.ZipFile(installed[2]).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"dpnet", installed[2].name.split("-py3")[0] + ".dist-info"}, tops
    for f in ("dpnet/_bundled/mnist/train-images-idx3-ubyte.gz",
              "dpnet/_bundled/tinyshakespeare/input.txt", "dpnet/workers/cpu_worker.py",
              "dpnet/workers/gpu_worker.py", "dpnet/workers/remote_worker.py"):
        assert f in names, f


def test_the_installed_package_works_from_anywhere(installed):
    bindir = installed[0]
    code = ("import importlib.util, dpnet, dpnet.data\n"
            "assert importlib.util.find_spec('workers') is None, 'a top-level workers'\n"
            "assert 'site-packages' in dpnet.__file__, dpnet.__file__\n"
            "d = dpnet.data.load_mnist(limit_train=500)\n"
            "print(d.x_train.shape, d.x_test.shape, dpnet.__version__)\n")
    r = run(installed, str(bindir / "python"), "-c", code)
    assert "(500, 784) (10000, 784) 0.1.0" in r.stdout
    r = run(installed, str(bindir / "runDnn"), "--workers", "2", "--epochs", "1",
            "--limit-train", "2000", "--hidden", "32")
    assert "2 worker processes" in r.stdout and "test accuracy:" in r.stdout
    r = run(installed, str(bindir / "runLstm"), "--steps", "20", "--hidden", "32",
            "--print-every", "10", "--eval-every", "0", "--sample-every", "0")
    assert "65 characters" in r.stdout and "20 steps" in r.stdout
    # a remote worker from the installed command, on this machine's loopback
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DPNET_DATA")}
    env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"
    coord = subprocess.Popen([str(bindir / "runDnn"), "--remote-workers", "1", "--listen",
                              f"tcp://127.0.0.1:{port}", "--epochs", "1", "--limit-train",
                              "500", "--hidden", "16"], cwd=installed[1], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    w = run(installed, str(bindir / "dpnet-worker"), "--connect", f"tcp://127.0.0.1:{port}",
            "--once", "--wait", "120")
    out, err = coord.communicate(timeout=120)
    assert coord.returncode == 0, err
    assert "start each with: dpnet-worker --connect" in err and "test accuracy:" in out
    assert "joined as worker 0" in w.stderr
    # python -m dpnet COMMAND: the same commands, wherever dpnet is installed
    r = run(installed, str(bindir / "python"), "-m", "dpnet", "debug", "--epochs", "1",
            "--limit-train", "500", "--hidden", "16")
    assert "test accuracy:" in r.stdout
    for cmd in ("mnist", "gpu", "lstm", "worker"):
        assert "usage: python -m dpnet " + cmd in run(
            installed, str(bindir / "python"), "-m", "dpnet", cmd, "--help").stdout
    for cmd in ("runDnnDebug", "runDnnGPU"):
        assert "usage:" in run(installed, str(bindir / cmd), "--help").stdout
    assert "dead runs" in run(installed, str(bindir / "python"), "-m", "dpnet", "clean",
                              "--dry-run").stdout


def test_every_dependency_has_a_floor_for_ci_lowest():
    """`.ci/lowest` tests the oldest releases pyproject.toml admits; it needs every
    dependency written NAME>=VERSION (a bare name would leave its floor untested)."""
    pytest.importorskip("tomllib")               # the script reads pyproject with it
    r = subprocess.run([sys.executable, ".ci/lowest_pins.py"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    pins = dict(p.split("==") for p in r.stdout.split())
    assert {"numpy", "scipy", "pyzmq", "msgpack", "psutil", "tqdm"} <= set(pins), pins
    assert all(v[0].isdigit() for v in pins.values()), pins
