"""The layering of docs/ARCHITECTURE.md, checked by importing every module and parsing
every import statement -- those inside functions too."""
import ast
import importlib

import pytest

from conftest import ROOT

PACKAGES = ("dpnet", "workers")

# Layers, bottom up: a module may import its own layer and those below, never above.
LAYERS = [
    ("dpnet._version", "dpnet.backend", "dpnet.strictdevice"),
    ("dpnet.nn", "dpnet.optim", "dpnet.storage", "dpnet.data", "dpnet.parallel"),
    ("dpnet.models",),
    ("dpnet.engines", "dpnet.workers", "workers"),
    ("dpnet.training",),
    ("dpnet.cli", "dpnet.sklearn"),
    ("dpnet",),                                  # the public facade, dpnet/__init__.py
]
MATH = ("dpnet.nn", "dpnet.optim", "dpnet.models")


def module_name(path):
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules():
    found = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            found[module_name(path)] = path
    return found


MODULES = all_modules()


def _resolve(target):
    """The module an import of ``target`` (dotted) executes last: itself, or the
    package whose attribute it is (``from dpnet.models import load``)."""
    while target and target not in MODULES:
        target = target.rpartition(".")[0]
    return target or None


def imports_of(name):
    """Every module of ours that ``name`` imports explicitly, anywhere in its code, and
    every third-party or standard module (top-level names) it imports."""
    path = MODULES[name]
    return parse_imports(name, path.read_text(), path.name == "__init__.py")


def parse_imports(name, source, is_pkg=False):
    ours, theirs = set(), set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                pkg = pkg[:len(pkg) - node.level + 1]
                base = ".".join(pkg + ([base] if base else []))
            # "from pkg import mod" imports pkg.mod when it is a module, else pkg
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base
                       for a in node.names]
        else:
            continue
        for t in targets:
            if t.split(".")[0] in PACKAGES:
                r = _resolve(t)
                if r is not None and r != name:
                    ours.add(r)
            else:
                theirs.add(t.split(".")[0])
    return ours, theirs


GRAPH = {m: imports_of(m)[0] for m in MODULES}


def layer_of(name):
    best = None
    for i, layer in enumerate(LAYERS):
        for prefix in layer:
            if name == prefix or name.startswith(prefix + "."):
                if best is None or len(prefix) > best[1]:
                    best = (i, len(prefix))
    return best[0]


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_module_imports(name, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))      # the workers/ launchers: a checkout only
    importlib.import_module(name)


def test_the_checkout_launchers_start_the_installed_workers():
    import subprocess
    import sys
    for kind in ("cpu", "gpu"):
        r = subprocess.run([sys.executable, "-m", f"workers.{kind}_worker"], cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and f"python -m dpnet.workers.{kind}_worker" in r.stderr


def find_cycles(graph):
    """Tarjan's strongly connected components; each of more than one node is a cycle."""
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_the_import_graph_has_no_cycle():
    assert find_cycles(GRAPH) == []


def test_the_cycle_check_sees_imports_inside_functions():
    """A model whose method imported the training loop would close a cycle (training
    imports the models): the walker must see that import and the check must find it."""
    ours, _ = parse_imports("dpnet.models.mlp", "def fit(self):\n    from ..training import fit\n")
    assert ours == {"dpnet.training"}       # the package (its fit is a function)
    graph = {k: set(v) for k, v in GRAPH.items()}
    graph["dpnet.models.mlp"] |= ours
    assert any("dpnet.models.mlp" in c and "dpnet.training" in c for c in find_cycles(graph))


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_go_down_the_layers(name):
    up = {m for m in GRAPH[name] if layer_of(m) > layer_of(name)}
    assert not up, f"{name} (layer {layer_of(name)}) imports from above: {sorted(up)}"


@pytest.mark.parametrize("name", sorted(m for m in MODULES if m.startswith(MATH)))
def test_the_maths_never_imports_transport_or_drives_training(name):
    ours, theirs = imports_of(name)
    assert not theirs & {"zmq", "msgpack", "psutil", "cupy"}, name
    assert not {m for m in ours if m.startswith(("dpnet.parallel", "dpnet.engines",
                                                 "dpnet.training", "dpnet.cli"))}, name


def test_only_the_backend_imports_cupy():
    users = sorted(m for m in MODULES if "cupy" in imports_of(m)[1])
    assert users == ["dpnet.backend"]


def test_protocol_imports_only_msgpack_numpy_and_the_standard_library():
    import sys
    ours, theirs = imports_of("dpnet.parallel.protocol")
    assert not ours
    for top in theirs:
        assert top in {"msgpack", "numpy", "__future__"} or top in sys.stdlib_module_names, top
