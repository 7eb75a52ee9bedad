"""Every code block of the README runs as written: the Python ones executed (with less
data and fewer steps, as the README says), every command line's flags parsed by the
script's own parser."""
import re
import shlex

import pytest

from conftest import ROOT

pytestmark = pytest.mark.timeout(300)
README = (ROOT / "README.md").read_text()
SHORTER = [("load_mnist()", "load_mnist(limit_train=3000)"), ("epochs=10", "epochs=1"),
           ("maxiter=50", "maxiter=3"), ("steps=300", "steps=20"),
           ("sample_every=100", "sample_every=10")]


def blocks(lang):
    return re.findall(rf"```{lang}\n(.*?)```", README, re.S)


@pytest.mark.parametrize("i", range(len(blocks("python"))))
def test_python_blocks_run(i, tmp_path, monkeypatch, capsys):
    code = blocks("python")[i]
    for a, b in SHORTER:
        code = code.replace(a, b)
    monkeypatch.chdir(tmp_path)                    # what they write lands here
    exec(compile(code, f"README python block {i + 1}", "exec"), {"__name__": "__readme__"})
    assert capsys.readouterr().out.strip()         # each prints a result


def command_lines():
    for block in blocks("bash"):
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("python scripts/"):
                yield line


@pytest.mark.parametrize("line", list(command_lines()))
def test_command_lines_parse(line):
    from dpnet.cli.lstm import lstm_parser
    from dpnet.cli.mnist import dnn_parser
    words = shlex.split(line)
    script, args = words[1].split("/")[-1], words[2:]
    parsers = {"runDnn.py": lambda: dnn_parser("runDnn.py", workers=True),
               "runDnnDebug.py": lambda: dnn_parser("runDnnDebug.py"),
               "runDnnGPU.py": lambda: dnn_parser("runDnnGPU.py", gpu=True),
               "runLstm.py": lambda: lstm_parser("runLstm.py")}
    if script not in parsers:                      # benchmarks: their own --help
        import subprocess
        import sys
        r = subprocess.run([sys.executable, str(ROOT / "scripts" / script), "--help"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, (line, r.stderr)
        return
    parsers[script]().parse_args(args)             # exits 2 (SystemExit) on a bad flag


def test_every_script_the_readme_names_exists():
    for name in set(re.findall(r"scripts/(\w+\.(?:py|sh))", README)):
        assert (ROOT / "scripts" / name).is_file(), name
