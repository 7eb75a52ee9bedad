"""Print pyproject.toml's dependency floors as pins ("numpy>=1.24" -> "numpy==1.24"):
the runtime dependencies and the dev extras that carry a floor and are not cupy or ray
(which need a GPU or start clusters; their tests skip without them)."""
import re
import sys

try:
    import tomllib                  # Python 3.11+ (run this with any such python3)
except ImportError:                 # pragma: no cover
    sys.exit("lowest_pins: needs Python 3.11 or newer to read pyproject.toml")

SKIP = {"cupy-cuda12x", "cupy-cuda13x", "ray", "pytest", "pytest-timeout", "hypothesis"}


def pins(pyproject="pyproject.toml"):
    with open(pyproject, "rb") as f:
        project = tomllib.load(f)["project"]
    out = []
    for req in project["dependencies"] + project["optional-dependencies"]["dev"]:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9][0-9.]*)", req.replace(" ", ""))
        if m is None:
            sys.exit(f"lowest_pins: {req!r} is not NAME>=VERSION")
        if m[1] not in SKIP and m[1] + "==" + m[2] not in out:
            out.append(f"{m[1]}=={m[2]}")
    return out


if __name__ == "__main__":
    print(" ".join(pins()))
