"""Where the bundled datasets are (MNIST as IDX files, tiny Shakespeare): in a checkout,
its ``data/`` folder; in an installed dpnet (a wheel), the package data ``dpnet/_bundled``
that the wheel is built with from that same folder."""
from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parents[1]           # dpnet/


def places(*parts):
    """The places a bundled file or folder may be, in the order they are searched."""
    return [_PACKAGE.parent / "data" / Path(*parts), _PACKAGE / "_bundled" / Path(*parts)]


def bundled(*parts):
    """The first place that exists, else the first (and ``missing`` names them all)."""
    for p in places(*parts):
        if p.exists():
            return p
    return places(*parts)[0]


def missing(*parts):
    """The end of an error message for a bundled file that is nowhere to be found."""
    return ("not found in " + " or ".join(str(p) for p in places(*parts)))
