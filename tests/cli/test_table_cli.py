"""Tabular data from the command line (issue 13): runDnn / runDnnDebug --data CSV
--target COLUMN on the shipped data/tables/passengers.csv -- a classifier, a regressor,
one-hot columns, the seeded test split, statistics of the training rows alone, resume
-- and every refusal, each one line with exit code 2."""
import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from dpnet.data import DataError
from dpnet.data.table import load_table
from conftest import ROOT

DEBUG = str(ROOT / "scripts" / "runDnnDebug.py")
DNN = str(ROOT / "scripts" / "runDnn.py")
CSV = ROOT / "data" / "tables" / "passengers.csv"
TRAIN = ["--drop", "passenger_id", "name", "--hidden", "32", "--epochs", "30",
         "--batch-size", "32", "--lr", "3e-3", "--lr-final", "3e-4", "--quiet"]
pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("no_workers_left")]


def run(*args, script=DEBUG, tmp_path=None):
    extra = ["--json", str(tmp_path / "s.json")] if tmp_path else []
    r = subprocess.run([sys.executable, script, "--data", str(CSV), *map(str, args), *extra],
                       capture_output=True, text=True, timeout=110, cwd=ROOT)
    summary = json.loads((tmp_path / "s.json").read_text()) if tmp_path and \
        r.returncode == 0 else None
    return r, summary


@pytest.mark.parametrize("script, extra", [(DEBUG, []), (DNN, ["--workers", "2"])])
def test_a_classifier_from_the_table(tmp_path, script, extra):
    r, s = run("--target", "survived", *TRAIN, *extra, script=script, tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (s["train"]["n"], s["val"]["n"], s["test"]["n"]) == (432, 48, 120)
    assert s["layers"] == [10, 32, 2]                 # 7 columns, two of them one-hot
    assert s["test"]["accuracy"] > 0.7                # the rule behind the data is found
    assert "per-class accuracy: 0: " in r.stdout and "  1: " in r.stdout
    assert len(s["per_class_test_accuracy"]) == 2


def test_a_regressor_from_the_table(tmp_path):
    r, s = run("--target", "fare", "--loss", "mse", *TRAIN, "--plot", tmp_path / "c.png",
               tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"     # the loss curves alone
    assert s["layers"][-1] == 1 and "accuracy" not in s["test"]
    assert s["test"]["r2"] > 0.5 and s["test"]["mse"] > 0
    assert f"test MSE: {s['test']['mse']:.6g}  R^2: {s['test']['r2']:.4f}  (120 rows)" \
        in r.stdout
    assert "test accuracy" not in r.stdout


def test_string_labels_are_named_in_the_report(tmp_path):
    rows = list(csv.reader(CSV.open()))
    rows[0][-1] = "fate"
    for row in rows[1:]:
        row[-1] = {"0": "lost", "1": "saved"}[row[-1]]
    path = tmp_path / "fates.csv"
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    r = subprocess.run([sys.executable, DEBUG, "--data", str(path), "--target", "fate", *TRAIN],
                       capture_output=True, text=True, timeout=110, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "per-class accuracy: lost: " in r.stdout and "  saved: " in r.stdout


def test_one_hot_columns_and_statistics_of_the_training_rows_alone():
    t = load_table(CSV, "survived", drop=["passenger_id", "name"], seed=3)
    assert t.features == ["pclass", "sex=female", "sex=male", "age", "sibsp", "parch", "fare",
                          "embarked=C", "embarked=Q", "embarked=S"]
    assert t.classes == ["0", "1"]
    np.testing.assert_allclose(t.x_train.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(t.x_train.std(axis=0), 1, atol=1e-4)
    assert not np.allclose(t.x_test.mean(axis=0), 0, atol=1e-3)   # not the test rows'
    # the same seed splits the same way, another seed otherwise; the fraction is kept
    again = load_table(CSV, "survived", drop=["passenger_id", "name"], seed=3)
    assert np.array_equal(again.x_test, t.x_test)
    other = load_table(CSV, "survived", drop=["passenger_id", "name"], seed=4,
                       test_fraction=0.3, validation=0)
    assert len(other.x_test) == 180 and len(other.x_val) == 0 and len(other.x_train) == 420


def test_resume_is_exact_and_needs_the_same_table_settings(tmp_path):
    common = ["--target", "survived", "--drop", "passenger_id", "name", "--hidden", "16",
              "--batch-size", "32", "--lr-final", "1e-3", "--quiet"]
    whole, part = tmp_path / "whole.npz", tmp_path / "part.npz"
    assert run(*common, "--epochs", "4", "--save", whole)[0].returncode == 0
    assert run(*common, "--epochs", "2", "--save", part)[0].returncode == 0
    r, _ = run(*common, "--epochs", "4", "--load", part, "--save", part)
    assert r.returncode == 0, r.stderr
    import dpnet
    assert np.array_equal(dpnet.load(whole).params, dpnet.load(part).params)
    r, _ = run(*common, "--epochs", "6", "--load", part, "--test-fraction", "0.3")
    assert r.returncode == 2 and "resuming needs the same settings" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    # another table of the same shape (one cell changed) is other data: refused, naming it
    other = edited(tmp_path, lambda rows: rows[5].__setitem__(4, "31"))
    assert load_table(other, "survived", drop=["passenger_id", "name"]).x_train.shape == \
        load_table(CSV, "survived", drop=["passenger_id", "name"]).x_train.shape
    r, _ = run(*common, "--epochs", "6", "--load", part, "--data", other)
    assert r.returncode == 2 and f"--load {str(part)!r} was not trained on this data (CSV " \
        f"file {other}: CRC-32 " in r.stderr and "resuming needs the same data" in r.stderr, \
        r.stderr


def edited(tmp_path, change):
    rows = list(csv.reader(CSV.open()))
    change(rows)
    path = tmp_path / "edited.csv"
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    return path


def blank_age(rows):
    rows[7][4] = ""


def dup_header(rows):
    rows[0][2] = "sex"


def ragged(rows):
    rows[12].append("extra")


@pytest.mark.parametrize("change, args, words", [
    (blank_age, ["--target", "survived", "--drop", "name"],
     "edited.csv: row 8, column 'age': missing value ''; fill or drop such rows first"),
    (None, ["--target", "survived"],
     "non-numeric columns with more than 32 distinct values cannot be one-hot encoded: "
     "'name' (306 distinct values); drop them (--drop)"),
    (None, ["--target", "Survived", "--drop", "name"], "no column 'Survived' (columns: "),
    (None, ["--target", "sex", "--loss", "mse", "--drop", "name"],
     "row 2, column 'sex': 'male' is not a number (a regression target must be)"),
    (None, ["--target", "survived", "--drop", "survived"], "'survived' is the target"),
    (dup_header, ["--target", "survived", "--drop", "name"], "column names appear twice: sex"),
    (ragged, ["--target", "survived", "--drop", "name"], "row 13 has 11 fields, the header 10"),
    (None, ["--target", "survived", "--drop", "name", "--augment", "affine"],
     "--augment deforms MNIST's images"),
    (None, ["--target", "survived", "--drop", "name", "--standardize"],
     "--standardize is for MNIST"),
    (None, ["--target", "fare", "--loss", "mse", "--drop", "name", "--output-activation",
            "softmax"], "--output-activation softmax cannot reach a regression target"),
    (None, ["--target", "fare", "--loss", "mse", "--drop", "name", "--output-activation",
            "sigmoid"], "--output-activation sigmoid cannot reach a regression target"),
])
def test_refusals_are_one_line(tmp_path, change, args, words):
    path = edited(tmp_path, change) if change else CSV
    r = subprocess.run([sys.executable, DEBUG, "--data", str(path), *args, "--epochs", "1"],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 2, r.stderr
    assert words in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_files_that_are_not_tables_are_named(tmp_path):
    for content, words in (("", "is empty: expected a header row"),
                           ("a,b\n", "has a header but no rows"),
                           ("a,b\n1,1\n", "the target 'b' has one value ('1')")):
        p = tmp_path / "t.csv"
        p.write_text(content)
        with pytest.raises(DataError, match=words.replace("(", r"\(").replace(")", r"\)")):
            load_table(p, "b")
    with pytest.raises(DataError, match="does not exist"):
        load_table(tmp_path / "none.csv", "b")
    (tmp_path / "bin.csv").write_bytes(b"a,b\n\xff\xfe,1\n")
    with pytest.raises(DataError, match="is not UTF-8 text"):
        load_table(tmp_path / "bin.csv", "b")
    # a header field without a name; a regression target with one value
    p.write_text("a,b,\n1,0,\n2,1,\n")
    with pytest.raises(DataError, match=r"column 3 of the header has no name \(a comma at "
                                        r"the end of the lines\?\)"):
        load_table(p, "b")
    p.write_text("a,b\n1,3\n2,3\n4,3.0\n")
    with pytest.raises(DataError, match=r"the target 'b' has one value \(3\): nothing to "
                                        r"predict"):
        load_table(p, "b", task="regression")


def test_a_stray_cell_in_a_column_of_numbers_is_named_not_encoded(tmp_path):
    rows = "".join(f"{i % 5},{i % 2}\n" for i in range(40))
    for stray in ("inf", "1e400", "-", '"1,000"'):           # numbers gone wrong
        p = tmp_path / "t.csv"
        lines = ("a,y\n" + rows).splitlines(keepends=True)
        lines[9] = f"{stray},1\n"                     # row 10 as a spreadsheet counts
        p.write_text("".join(lines))
        shown = stray.strip('"')
        with pytest.raises(DataError, match=f"row 10, column 'a': '{shown}' is not a finite "
                                            f"number, in a column of numbers"):
            load_table(p, "y")
    # a word among many distinct numbers (too many values to be categories) too
    p.write_text("a,y\n" + "".join(f"{'x' if i == 8 else i * 0.5},{i % 2}\n"
                                     for i in range(60)))
    with pytest.raises(DataError, match="row 10, column 'a': 'x' is not a finite number"):
        load_table(p, "y")
    # codes with a letter among them are categories, as are words with a number
    p.write_text("a,y\n" + "".join(f"{'K' if i % 12 == 0 else i % 11},{i % 2}\n"
                                     for i in range(60)))
    assert "a=K" in load_table(p, "y").features
    p.write_text("a,y\n" + "".join(f"{['red', 'blue', '3'][i % 3]},{i % 2}\n"
                                     for i in range(30)))
    assert "a=3" in load_table(p, "y").features


def test_a_wide_table_and_classes_absent_from_the_test_set_are_reported_plainly(tmp_path):
    p = tmp_path / "t.csv"
    rng = np.random.default_rng(0)
    rows = [",".join(f"c{i}" for i in range(60)) + ",y"]
    rows += [",".join(f"{v:.3f}" for v in rng.normal(size=60)) + f",{'abcde'[k % 5]}"
             for k in range(40)]
    p.write_text("\n".join(rows) + "\n")
    js = tmp_path / "s.json"
    r = subprocess.run([sys.executable, DEBUG, "--data", str(p), "--target", "y", "--epochs",
                        "1", "--hidden", "4", "--test-fraction", "0.05", "--json", str(js)],
                       capture_output=True, text=True, timeout=110, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    line = next(l for l in r.stdout.splitlines() if "features from" in l)
    assert "60 features" in line and "c19, ... 40 more)" in line and "c20" not in line
    s = json.loads(js.read_text())
    assert s["classes"] == list("abcde") and len(s["per_class_test_accuracy"]) == 5
    absent = [c for c, a in zip(s["classes"], s["per_class_test_accuracy"]) if a is None]
    assert absent and all(f"{c}: none in the test set" in r.stdout for c in absent)
    assert "nan" not in r.stdout


def test_numeric_labels_are_classes_by_value(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("a,y\n" + "".join(f"{i},{['1', '1.0', '0', '2e0'][i % 4]}\n"
                                     for i in range(40)))
    t = load_table(p, "y")
    assert t.classes == ["0", "1", "2"] and t.n_classes == 3
    # integers are read exactly: long ids that one float would merge stay apart
    ids = ["12345678901234567890", "12345678901234567891"]
    p.write_text("a,y\n" + "".join(f"{i},{ids[i % 2]}\n" for i in range(20)))
    assert load_table(p, "y").classes == ids


def test_columns_far_from_one_are_standardized_not_lost(tmp_path):
    """Features near 1e300 or 1e-310 (their squares overflow or vanish: the column
    became all zeros), a regression target 1.7e9 + small changes or near 1e-46 (cast
    to float32 before standardizing: rounded away): each comes out as the same column
    at scale 1 does."""
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=300), rng.normal(size=300)

    def table(name, fa, fy):
        p = tmp_path / name
        p.write_text("a,b,y\n" + "".join(f"{float(fa(u))!r},{float(v)!r},{float(fy(u))!r}\n"
                                         for u, v in zip(a, b)))
        return load_table(p, "y", task="regression")
    ref = table("ref.csv", lambda u: u, lambda u: 20 * u)
    assert ref.x_train.std(axis=0) == pytest.approx([1, 1], abs=1e-6)
    for fa, fy in ((lambda u: u * 1e300, lambda u: 1.7e9 + 20 * u),
                   (lambda u: u * 1e-310, lambda u: u * 1e-46),
                   (lambda u: 5e-324 * round(u * 1000), lambda u: -1e300 + 1e290 * u)):
        t = table("t.csv", fa, fy)
        assert np.allclose(t.x_train, ref.x_train, atol=2e-3 if fa(1) < 1e-320 else 1e-5)
        assert np.allclose(t.y_train, ref.y_train, atol=1e-5)
        assert np.isfinite(t.mean).all() and np.isfinite(t.std).all()
    # a constant column stays 0, whatever its size
    p = tmp_path / "const.csv"
    p.write_text("a,b,c,y\n" + "".join(f"1e300,{float(v)!r},0.1,{int(v > 0)}\n" for v in b))
    t = load_table(p, "y")
    assert np.array_equal(t.x_train[:, [0, 2]], np.zeros((len(t.x_train), 2)))
