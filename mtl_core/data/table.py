"""The `csv` suite: the user's own table, one task per chosen target column.

Rows are shuffled with the seed and `test_fraction` of them held out as the test set; the
rest is the training pool. Inputs are standardised with the pool's mean and std (a constant
column is only centred). Each target's kind is guessed (`infer_kind`) unless `kinds`
overrides it; class labels become ids in sorted order with `class_names`, regression
targets are standardised like the synthetic suites (`target_scale` = pool std,
`meta["target_mean"]` = pool mean).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from pydantic import Field

from mtl_core.data import SUITES
from mtl_core.data.base import DataError, Split, SuiteData, TaskKind, TaskSpec
from mtl_core.registry import Params

if TYPE_CHECKING:
    import pandas as pd

MAX_GUESSED_CLASSES = 20  # integer columns with at most this many values look like labels
MAX_CLASSES = 100  # beyond this a "classification" override is almost surely a mistake
RESERVED_NAMES = ("total",)  # the sink uses "total" and "a|b" as task names of its own


class CsvParams(Params):
    path: str = Field("", description=(
        "The CSV file; a relative path is tried in the working folder, then the data folder."))
    inputs: list[str] = Field(default_factory=list, description=(
        "Input columns; empty uses every column that is not a target."))
    targets: list[str] = Field(default_factory=list, description=(
        "Columns to predict, one task each."))
    kinds: dict[str, TaskKind] = Field(default_factory=dict, description=(
        "Task kind per target column, to override the guess."))
    test_fraction: float = Field(0.2, ge=0.05, le=0.5, description=(
        "Share of the rows held out as the test set."))


def infer_kind(column: pd.Series) -> TaskKind:
    """Text, booleans and whole numbers with few distinct values are labels (2 values:
    binary); any other number is a regression target."""
    import pandas as pd  # here, not at the top: a worker without pandas is ~95 MB smaller

    n_unique = column.nunique()
    if not pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column):
        return "binary" if n_unique == 2 else "classification"
    values = column.to_numpy(dtype=np.float64)
    if np.all(np.isfinite(values)) and np.all(values == np.round(values)) \
            and n_unique <= MAX_GUESSED_CLASSES:
        return "binary" if n_unique == 2 else "classification"
    return "regression"


def _resolve(path_text: str, data_dir: Path) -> Path:
    if not path_text.strip():
        raise DataError("csv: no file given; set data.params.path to a .csv file")
    path = Path(path_text).expanduser()
    candidates = [path] if path.is_absolute() else [path, Path(data_dir) / path]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    where = " or ".join(str(c.resolve()) for c in candidates)
    raise DataError(f"csv: file not found: {where}")


def _read(path: Path) -> pd.DataFrame:
    import pandas as pd

    from mtl_core.limits import current, over

    limits = current()
    size = path.stat().st_size
    if size > limits.max_csv_bytes:
        raise DataError(f"csv: {over('the file size in bytes', size, 'max_csv_bytes', limits)}")
    with path.open("rb") as handle:
        head = handle.read(8192)
    if b"\x00" in head:  # a text table has no NUL bytes: say so instead of parsing garbage
        raise DataError(f"csv: {path} is a binary file, not a CSV table")
    try:
        frame = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise DataError(f"csv: {path} is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError) as exc:
        raise DataError(f"csv: cannot read {path} as CSV: {str(exc)[:200]}") from None
    if len(frame) == 0:
        raise DataError(f"csv: {path} has a header but no rows")
    return frame


def _columns(frame: pd.DataFrame, params: CsvParams) -> tuple[list[str], list[str]]:
    """Validated (inputs, targets)."""
    available = [str(c) for c in frame.columns]
    listed = _listed(available)
    targets = list(params.targets)
    if not targets:
        raise DataError(f"csv: no target columns; set data.params.targets to one or more of: "
                        f"{listed}")
    for group, names in (("target", targets), ("input", params.inputs)):
        unknown = [n for n in names if n not in available]
        if unknown:
            raise DataError(f"csv: {group} column(s) not in the file: {_listed(unknown)}; "
                            f"the columns are: {listed}")
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise DataError(f"csv: {group} column(s) listed twice: {_listed(twice)}")
    for name in targets:
        if name in RESERVED_NAMES or "|" in name:
            raise DataError(f"csv: target column {_show(name)} cannot be a task name "
                            "(\"total\" and names with '|' are reserved); rename the column")
    inputs = list(params.inputs) or [c for c in available if c not in targets]
    both = [n for n in inputs if n in targets]
    if both:
        raise DataError(f"csv: column(s) both input and target: {_listed(both)}")
    if not inputs:
        raise DataError("csv: no input columns left; the file needs at least one column "
                        "that is not a target")
    stray = [k for k in params.kinds if k not in targets]
    if stray:
        raise DataError(f"csv: kinds given for non-target column(s): {_listed(stray)}; "
                        f"targets are: {_listed(targets)}")
    return inputs, targets


def _check_values(frame: pd.DataFrame, inputs: list[str], targets: list[str]) -> None:
    import pandas as pd

    for name in inputs + targets:
        column = frame[name]
        bad = column.isna()
        if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
            bad = bad | ~np.isfinite(column.to_numpy(dtype=np.float64))
        if bad.any():
            lines = [int(i) + 2 for i in np.flatnonzero(bad.to_numpy())[:5]]  # 1 = header
            more = ", ..." if bad.sum() > 5 else ""
            raise DataError(f"csv: column {_show(name)} has {int(bad.sum())} missing or infinite "
                            f"value(s) (file lines {', '.join(map(str, lines))}{more}); fill or "
                            "drop those rows")
    for name in inputs:
        column = frame[name]
        if not pd.api.types.is_numeric_dtype(column):
            raise DataError(f"csv: input column {_show(name)} is not numeric (e.g. "
                            f"{_show(column.iloc[0])}); inputs must be numbers: drop it from "
                            "inputs, encode it as numbers, or use it as a target")


def _show(value: object) -> str:
    """A cell value as the user wrote it: 5, 'red' (not np.int64(5)); bounded."""
    from mtl_core.limits import short

    return short(value.item() if isinstance(value, np.generic) else value, 40)


def _listed(names: list[str], limit: int = 300) -> str:
    """Column names for a message: each cut to 40 characters, the list to `limit`."""
    from mtl_core.limits import short

    text = ", ".join(n if len(n) <= 40 else short(n, 40) for n in names)
    return text if len(text) <= limit else text[:limit] + f"... ({len(names)} columns)"


def _label_name(value: object) -> str:
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _target(column: pd.Series, kind: TaskKind, pool: torch.Tensor
            ) -> tuple[torch.Tensor, TaskSpec, float | None]:
    """Encoded target, its spec and (regression only) the pool mean."""
    import pandas as pd

    name = str(column.name)
    values = column.to_numpy()
    if column.nunique() < 2:
        raise DataError(f"csv: target column {_show(name)} has the single value "
                        f"{_show(values[0])} in every row: there is nothing to learn; "
                        "pick another target")
    if kind == "regression":
        if not pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column):
            raise DataError(f"csv: target column {_show(name)} holds labels "
                            f"(e.g. {_show(values[0])}), not numbers: it cannot be a "
                            "regression target; use classification or binary")
        y = torch.as_tensor(values.astype(np.float32))
        mean, std = y[pool].mean().item(), y[pool].std().item()
        std = std if std > 0 else 1.0
        return (y - mean) / std, TaskSpec(name, "regression", target_scale=std,
                                          description=f"column {name}"), mean
    labels = np.unique(values)  # sorted: class ids follow the labels' natural order
    if kind == "binary" and len(labels) != 2:
        raise DataError(f"csv: target column {_show(name)} has {len(labels)} distinct values; "
                        "binary needs exactly 2: use classification or regression")
    if len(labels) > MAX_CLASSES:
        raise DataError(f"csv: target column {_show(name)} has {len(labels)} distinct values; "
                        f"classification allows at most {MAX_CLASSES}: use regression")
    ids = torch.as_tensor(np.searchsorted(labels, values), dtype=torch.int64)
    names = [_label_name(v) for v in labels]
    if kind == "binary":
        return ids.float(), TaskSpec(name, "binary", class_names=names,
                                     description=f"column {name}: {names[1]}?"), None
    return ids, TaskSpec(name, "classification", num_classes=len(labels), class_names=names,
                         description=f"column {name}"), None


@SUITES.register(
    "csv",
    "Your own table from a CSV file: pick the input columns and the columns to predict.",
    params=CsvParams, task_names=lambda p: list(p.targets), input_kind="vector", paths=("path",),
)
def build_csv(params: CsvParams, *, seed: int, data_dir: Path) -> SuiteData:
    path = _resolve(params.path, data_dir)
    frame = _read(path)
    inputs, targets = _columns(frame, params)
    _check_values(frame, inputs, targets)

    n = len(frame)
    n_test = max(1, round(params.test_fraction * n))
    if n - n_test < 2:  # load_suite needs one validation and one training row
        raise DataError(f"csv: {path} has {n} rows; at least {n_test + 2} are needed for a "
                        f"test fraction of {params.test_fraction}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    pool, test = order[n_test:], order[:n_test]

    x = torch.tensor(frame[inputs].to_numpy(dtype=np.float32))  # a copy: pandas' may be read-only
    mean = x[pool].mean(0)
    std = x[pool].std(0) if len(pool) > 1 else torch.ones_like(mean)
    std = torch.where(std > 0, std, torch.ones_like(std))  # constant column: centre only
    x = (x - mean) / std

    encoded, tasks, target_mean = {}, [], {}
    for name in targets:
        kind = params.kinds.get(name) or infer_kind(frame[name])
        encoded[name], spec, centre = _target(frame[name], kind, pool)
        tasks.append(spec)
        if centre is not None:
            target_mean[name] = centre

    full = Split({"x": x}, encoded)
    train = full.take(pool)
    return SuiteData(
        suite="csv", tasks=tasks, train=train, val=train, test=full.take(test),
        input_shapes={"x": (len(inputs),)}, input_kind="vector",
        meta={"path": str(path), "inputs": inputs, "input_mean": mean.tolist(),
              "input_std": std.tolist(), "target_mean": target_mean},
    )
