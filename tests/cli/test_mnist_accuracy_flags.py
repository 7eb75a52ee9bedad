"""The accuracy flags of runDnn / runDnnDebug (issue 12): --augment and its strengths,
--maxout, --max-norm, --input-dropout -- each seen in the checkpoint and in the
weights, the deformations the same for 0, 1 and 2 workers, a resume exact, and the
combinations that cannot work refused in one line."""
import subprocess
import sys

import numpy as np
import pytest

from dpnet import Deform, Dense, Dropout, Maxout
from conftest import ROOT
from test_mnist_flags import DEBUG, DNN, run  # noqa: F401  (run: the flag tests' runner)

pytestmark = [pytest.mark.timeout(180), pytest.mark.usefixtures("no_workers_left")]


def test_augment_puts_a_deformation_first_and_changes_the_training(tmp_path):
    plain, _, _ = run(tmp_path, name="plain")
    m, _, _ = run(tmp_path, "--augment", "elastic", "--shift", "1", "--rotate", "5",
                  "--scale", "0.05", "--shear", "0.2", "--elastic-alpha", "20",
                  "--elastic-sigma", "3", name="el")
    d = m.layers[0]
    assert isinstance(d, Deform)
    assert d.config() == {"type": "deform", "kind": "elastic", "image_shape": [28, 28],
                          "shift": 1.0, "rotate": 5.0, "scale": 0.05, "shear": 0.2,
                          "alpha": 20.0, "sigma": 3.0, "fill": 0.0}
    assert m.params.shape == plain.params.shape
    assert not np.allclose(m.params, plain.params)


def test_the_deformations_do_not_depend_on_the_worker_count(tmp_path):
    """Each worker deforms its own shard; a sample's draw depends on its row in the
    step, not on the worker: 1 and 2 workers end where the in-process run ends."""
    flags = ("--augment", "affine", "--dropout", "0.1")
    ref, _, _ = run(tmp_path, *flags, name="in")
    for w in (1, 2):
        m, s, _ = run(tmp_path, *flags, "--workers", str(w), script=DNN, name=f"w{w}")
        assert s["engine"]["workers"] == w
        np.testing.assert_allclose(m.params, ref.params, rtol=1e-4, atol=1e-5)


def test_a_resume_with_augment_is_exact_and_needs_the_same_augment(tmp_path):
    flags = ("--augment", "affine", "--batch-size", "50", "--lr-final", "1e-3")
    whole, _, _ = run(tmp_path, *flags, name="whole")                   # 2 epochs
    first, _, _ = run(tmp_path, *flags, "--epochs", "1", name="first")
    r = subprocess.run([sys.executable, DEBUG, "--limit-train", "600", "--validation", "200",
                        "--hidden", "16", "--quiet", *flags, "--epochs", "2", "--load",
                        str(tmp_path / "first.npz"), "--save", str(tmp_path / "first.npz")],
                       capture_output=True, text=True, timeout=110, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    import dpnet
    assert np.array_equal(dpnet.load(tmp_path / "first.npz").params, whole.params)
    for other in (["--augment", "none"], ["--augment", "affine", "--shift", "1"]):
        r = subprocess.run([sys.executable, DEBUG, "--limit-train", "600", "--validation",
                            "200", "--hidden", "16", "--quiet", "--epochs", "3",
                            "--batch-size", "50", "--lr-final", "1e-3", *other, "--load",
                            str(tmp_path / "first.npz")],
                           capture_output=True, text=True, timeout=110, cwd=ROOT)
        # named by the flag, as any other setting a resume needs the same
        said = ("was trained with --shift 2, this run has 1" if "--shift" in other
                else "was trained with --augment affine, this run has none")
        assert r.returncode == 2 and said in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_maxout_max_norm_and_input_dropout_build_that_network(tmp_path):
    m, s, r = run(tmp_path, "--maxout", "3", "--max-norm", "0.4", "--input-dropout", "0.2",
                  "--dropout", "0.3", "--augment", "none", name="mx")
    kinds = [type(l) for l in m.layers]
    assert kinds == [Dropout, Maxout, Dropout, Dense]
    mx, out = m.layers[1], m.layers[3]
    assert (mx.n_in, mx.n_out, mx.pieces, mx.W.shape) == (784, 16, 3, (784, 48))
    assert m.layers[0].rate == 0.2 and m.layers[2].rate == 0.3
    for layer in (mx, out):
        assert layer.max_norm == 0.4
        assert np.linalg.norm(layer.W, axis=0).max() <= 0.4 * (1 + 1e-6)
    assert "W1 784x48 + b1 48" in r.stdout and f"total weights: {m.n_params:,}" in r.stdout
    assert m.n_params == 785 * 48 + 17 * 10


def test_the_default_is_affine_except_where_it_cannot_apply(tmp_path):
    """Affine deformations by default; none with --standardize or a full-batch
    optimizer (no error for a flag not given); on --load, the checkpoint's choice and
    strengths."""
    m, s, _ = run(tmp_path, name="default")
    assert isinstance(m.layers[0], Deform) and m.layers[0].kind == "affine"
    assert s["args"]["augment"] == "affine"
    for flags in (["--standardize"], ["--optimizer", "lbfgs"]):
        m, s, _ = run(tmp_path, *flags, name="n" + flags[-1].strip("-"))
        assert not any(isinstance(l, Deform) for l in m.layers) and s["args"]["augment"] == "none"
    base = ["--limit-train", "600", "--validation", "200", "--hidden", "16", "--quiet"]
    for aug in ("none", "elastic"):
        ck = tmp_path / f"{aug}.npz"
        strength = ["--elastic-alpha", "20"] if aug == "elastic" else []
        r = subprocess.run([sys.executable, DEBUG, *base, "--epochs", "1", "--augment", aug,
                            *strength, "--save", str(ck)], capture_output=True,
                           text=True, timeout=110, cwd=ROOT)
        assert r.returncode == 0, r.stderr
        r = subprocess.run([sys.executable, DEBUG, *base, "--epochs", "2", "--load", str(ck),
                            "--save", str(ck)], capture_output=True, text=True, timeout=110,
                           cwd=ROOT)
        assert r.returncode == 0, r.stderr
        import dpnet
        layers = dpnet.load(ck).layers
        if aug == "none":
            assert not any(isinstance(l, Deform) for l in layers)
            r = subprocess.run([sys.executable, DEBUG, *base, "--epochs", "3", "--load",
                                str(ck), "--shift", "3"], capture_output=True, text=True,
                               timeout=110, cwd=ROOT)
            assert r.returncode == 2 and "--shift sets how training images are deformed, " \
                "but this run deforms none (the checkpoint was trained without " \
                "deformations): drop it" in r.stderr, r.stderr
            continue
        assert layers[0].kind == "elastic" and layers[0].alpha == 20
        # the strengths not given are the checkpoint's, --augment given or not; one
        # given that differs is named, never silently replaced
        r = subprocess.run([sys.executable, DEBUG, *base, "--epochs", "3", "--load", str(ck),
                            "--augment", "elastic", "--save", str(ck)], capture_output=True,
                           text=True, timeout=110, cwd=ROOT)
        assert r.returncode == 0, r.stderr
        r = subprocess.run([sys.executable, DEBUG, *base, "--epochs", "4", "--load", str(ck),
                            "--elastic-alpha", "30"], capture_output=True, text=True,
                           timeout=110, cwd=ROOT)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert f"--load {str(ck)!r} was trained with --elastic-alpha 20, this run has 30; " \
            "resuming needs the same settings" in r.stderr, r.stderr


@pytest.mark.parametrize("flags, words", [
    (["--augment", "affine", "--standardize"], "--augment moves pixels"),
    (["--augment", "affine", "--optimizer", "lbfgs"], "drop --augment"),
    (["--max-norm", "1", "--optimizer", "cg"], "drop --max-norm"),
    (["--augment", "warp"], "argument --augment: invalid choice: 'warp'"),
    (["--rotate", "200"], "--rotate: expected a number in [0, 180], got '200'"),
    (["--maxout", "0"], "--maxout"),
    (["--max-norm", "0"], "--max-norm: expected a number in (0, inf)"),
    # a deformation's strength where nothing is deformed: refused, not ignored
    (["--augment", "none", "--shift", "1"],
     "--shift sets how training images are deformed, but this run deforms none "
     "(--augment none): drop it"),
    (["--optimizer", "lbfgs", "--rotate", "5"], "(--optimizer lbfgs is full-batch)"),
    (["--standardize", "--scale", "0.2"], "deforms none (--standardize)"),
    (["--preset", "maxout", "--shear", "0.2"], "(--preset maxout sets --augment none)"),
    (["--preset", "deformed", "--optimizer", "cg", "--shift", "3"],
     "(--optimizer cg is full-batch)"),
    (["--elastic-alpha", "20"],
     "--elastic-alpha is for --augment elastic, this run has --augment affine"),
    (["--augment", "affine", "--elastic-sigma", "3"], "--elastic-sigma is for --augment elastic"),
    # flags the chosen network or optimizer has no use for: refused, not ignored
    (["--maxout", "3", "--activation", "tanh"],
     "--activation is for the hidden layers' units; --maxout 3 units are the max of "
     "linear pieces: give one of them"),
    (["--preset", "maxout", "--activation", "tanh"],
     "--maxout 5 units are the max of linear pieces: drop it, or --preset maxout"),
    (["--momentum", "0.5"], "--momentum is for --optimizer momentum or nesterov, not adam"),
    (["--momentum-decay", "0.5", "--optimizer", "sgd"],
     "--momentum-decay is for --optimizer momentum or nesterov, not sgd"),
    (["--momentum", "0.5", "--optimizer", "lbfgs"], "not lbfgs"),
])
def test_combinations_that_cannot_work_are_one_line(tmp_path, flags, words):
    r = subprocess.run([sys.executable, DEBUG, "--limit-train", "100", "--epochs", "1",
                        *flags], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 2, r.stderr
    assert words in r.stderr and len(r.stderr.strip().splitlines()) <= 2, r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("name", ["seed000", "maxout", "deformed"])
def test_each_recipe_parses_and_runs_a_short_epoch(tmp_path, name):
    """The preset's values reach the model; a flag given on the command line wins."""
    from dpnet.cli.presets import PRESETS
    values = PRESETS[name][1]
    r = subprocess.run([sys.executable, DNN, "--workers", "2", "--preset", name,
                        "--limit-train", "700", "--validation", "200", "--epochs", "1",
                        "--hidden", "32", "16", "--quiet", "--json", str(tmp_path / "s.json"),
                        "--save", str(tmp_path / "r.npz")],
                       capture_output=True, text=True, timeout=150, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    import dpnet
    import json
    m = dpnet.load(tmp_path / "r.npz")
    args = json.loads((tmp_path / "s.json").read_text())["args"]
    assert args["preset"] == name and args["hidden"] == [32, 16]          # the flag won
    for key in ("batch_size", "lr", "optimizer", "augment", "maxout", "max_norm", "l2"):
        if key in values:
            assert args[key] == values[key], key
    hidden = [l for l in m.layers if isinstance(l, Dense)][:-1]
    assert [l.n_out for l in hidden] == [32, 16]
    if values.get("maxout"):
        assert all(isinstance(l, Maxout) and l.pieces == values["maxout"] for l in hidden)
    # every recipe says whether it deforms the images (the default would otherwise)
    assert "augment" in values
    if values["augment"] == "none":
        assert not any(isinstance(l, Deform) for l in m.layers)
    else:
        assert m.layers[0].kind == values["augment"]
    if values.get("max_norm"):
        assert all(l.max_norm == values["max_norm"] for l in m.layers if isinstance(l, Dense))


def test_a_recipes_values_do_not_count_as_flags_given(tmp_path):
    """--preset seed000 sets --momentum, --lr and dropout: --momentum-decay and lbfgs
    still go with it; --preset deformed's deformations give way to --standardize, and
    its strengths to a checkpoint's."""
    r = subprocess.run([sys.executable, DEBUG, "--preset", "seed000", "--momentum-decay",
                        "0.9", "--limit-train", "600", "--validation", "100", "--epochs", "1",
                        "--hidden", "16", "--quiet", "--save", str(tmp_path / "a.npz")],
                       capture_output=True, text=True, timeout=110, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    import dpnet
    assert dpnet.load(tmp_path / "a.npz").optimizer.config()["momentum"] == 0.9
    for preset, extra in (("seed000", ["--optimizer", "lbfgs"]),
                          ("maxout", ["--optimizer", "cg"]),
                          ("deformed", ["--standardize"])):
        r = subprocess.run([sys.executable, DEBUG, "--preset", preset, *extra,
                            "--limit-train", "600", "--validation", "100", "--epochs", "1",
                            "--hidden", "16", "--quiet", "--json", str(tmp_path / "s.json")],
                           capture_output=True, text=True, timeout=110, cwd=ROOT)
        assert r.returncode == 0, (extra, r.stderr)
        import json
        args = json.loads((tmp_path / "s.json").read_text())["args"]
        assert args["augment"] == "none"
        if preset != "deformed":         # dropout and max-norm give way to a full batch
            assert args["dropout"] == args["input_dropout"] == 0
            assert args["max_norm"] is None
    # on --load a recipe's strengths give way to the checkpoint's as defaults do
    base = [sys.executable, DEBUG, "--preset", "deformed", "--limit-train", "600",
            "--validation", "100", "--hidden", "16", "--quiet", "--save", str(tmp_path / "d.npz")]
    r = subprocess.run(base + ["--epochs", "1", "--elastic-alpha", "20"], capture_output=True,
                       text=True, timeout=110, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    r = subprocess.run(base + ["--epochs", "2", "--load", str(tmp_path / "d.npz")],
                       capture_output=True, text=True, timeout=110, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert dpnet.load(tmp_path / "d.npz").layers[0].alpha == 20
