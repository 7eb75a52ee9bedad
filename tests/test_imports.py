"""The layering rules of DESIGN.md, checked by parsing every module's imports."""
import ast

import pytest

from conftest import ROOT

PKG = ROOT / "dpnet"
MATH = ["layers.py", "activations.py", "losses.py", "optimizers.py", "schedules.py",
        "initializers.py", "params.py", "rng.py", "fileio.py", "models"]


def imports_of(path):
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:                       # resolve relative imports to dpnet.*
                base = path.relative_to(ROOT).with_suffix("").parts[:-node.level]
                mod = ".".join(base + ((mod,) if mod else ()))
            names.add(mod)
    return names


def files(entries):
    for e in entries:
        p = PKG / e
        yield from (sorted(p.rglob("*.py")) if p.is_dir() else [p])


@pytest.mark.parametrize("path", list(files(MATH)), ids=lambda p: p.name)
def test_math_core_never_imports_transport(path):
    bad = {m for m in imports_of(path)
           if m.split(".")[0] in ("zmq", "msgpack", "psutil", "cupy")
           or m.startswith("dpnet.parallel")}
    assert not bad, f"{path.name} imports {bad}"


def test_only_backend_imports_cupy():
    for path in PKG.rglob("*.py"):
        if path.name != "backend.py":
            assert not {m for m in imports_of(path) if m.split(".")[0] == "cupy"}, path


def test_protocol_imports_only_msgpack_and_numpy():
    path = PKG / "parallel" / "protocol.py"
    if not path.exists():
        pytest.skip("no protocol module yet")
    allowed_third_party = {"msgpack", "numpy"}
    for m in imports_of(path):
        top = m.split(".")[0]
        assert top not in ("zmq", "psutil", "cupy") and not m.startswith("dpnet."), m
        assert top in allowed_third_party or top in __import__("sys").stdlib_module_names \
            or top == "__future__", m
