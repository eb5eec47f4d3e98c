"""The trust boundary: which files a config from a browser may name.

A config that comes from a browser (form, `?cfg=` link, YAML upload, CSV upload or path box)
may read files only inside the allowed roots: the upload folder (`<runs dir>/uploads`),
`MTL_DATA_DIR`, the folders listed in `MTL_DATA_ROOTS` (separated by `os.pathsep`) and the
project's bundled `examples/data`. A path is resolved with every symlink followed before it is
compared, so a link inside a root that points outside is refused too. A refusal names the
allowed roots and quotes nothing of the file (the file is never opened).

The CLI is the machine's own user and keeps full paths, unless the operator sets
`MTL_RESTRICT_PATHS=1`, which puts it behind the same boundary.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mtl_core.limits import short

EXAMPLES_DATA = Path(__file__).resolve().parent.parent / "examples" / "data"
PATH_PARAMS = "paths"  # a suite's registry extra: the names of its params that are file paths


def restrict_paths() -> bool:
    """Whether the operator put the CLI behind the browser's boundary (MTL_RESTRICT_PATHS)."""
    return os.environ.get("MTL_RESTRICT_PATHS", "").strip().lower() in ("1", "true", "yes", "on")


def allowed_roots() -> list[Path]:
    """The folders a browser's config may read from, resolved."""
    from mtl_core.data import data_dir
    from mtl_core.store import default_runs_dir

    runs = Path(os.environ.get("MTL_RUNS_DIR") or default_runs_dir())
    roots = [runs / "uploads", data_dir(), EXAMPLES_DATA]
    roots += [Path(p) for p in os.environ.get("MTL_DATA_ROOTS", "").split(os.pathsep)
              if p.strip()]
    out: list[Path] = []
    for root in roots:
        resolved = root.expanduser().resolve()
        if resolved not in out:
            out.append(resolved)
    return out


def candidates(text: str) -> list[Path]:
    """Where a path from a config is looked for: as given (relative to the working folder),
    then in the data folder (the csv suite's rule)."""
    from mtl_core.data import data_dir

    path = Path(text).expanduser()
    return [path] if path.is_absolute() else [path, data_dir() / path]


def inside_roots(text: str) -> Path | None:
    """Where the csv suite will read `text` from, resolved (symlinks followed), if that is
    inside an allowed root; else None. The suite reads the first candidate that exists, so
    that one decides; when none exists, the first inside a root (it is then "not found")."""
    roots = allowed_roots()
    inside = None
    for candidate in candidates(text):
        try:
            resolved = candidate.resolve()
        except (OSError, RuntimeError):  # a symlink loop
            return None
        ok = any(resolved.is_relative_to(root) for root in roots)
        if candidate.exists():
            return resolved if ok else None
        if ok and inside is None:
            inside = resolved
    return inside


def refusal(text: str) -> str:
    roots = ", ".join(str(r) for r in allowed_roots())
    return (f"only files inside the allowed folders can be read from a browser (or with "
            f"MTL_RESTRICT_PATHS): {roots}; upload the file, or ask the operator to add its "
            f"folder to MTL_DATA_ROOTS (got {short(text)})")


def path_problems(suite: str, params: dict[str, Any]) -> list[tuple[str, str]]:
    """(field path, message) for every file param of `suite` that leaves the allowed roots."""
    from mtl_core.data import SUITES

    if suite not in SUITES:
        return []
    out = []
    for name in SUITES.get(suite).extra.get(PATH_PARAMS, ()):
        text = params.get(name)
        if isinstance(text, str) and text.strip() and inside_roots(text) is None:
            out.append((f"data.params.{name}", refusal(text)))
    return out


def weights_outside_roots(weights: str | None) -> bool:
    """Whether a `model.trunk.weights` path (not `imagenet`, which reads only torch's own
    cache) leaves the allowed roots."""
    if weights is None or not weights.strip() or weights == "imagenet":
        return False
    path = Path(weights).expanduser()
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError):
        return True
    return not any(resolved.is_relative_to(root) for root in allowed_roots())
