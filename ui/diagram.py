"""The architecture diagram: `MTLModel.blocks()` as a Graphviz DOT string.

Shared blocks sit in one grey-blue cluster, each task's blocks in a cluster of the task's colour,
every box says what it is and how many parameters it has, and a black dot marks each branch
point (where one output feeds blocks of different owners). `dot_for_blocks` is pure; the
`cached_*` helpers build the model (never train it) with Streamlit caches so that editing a
widget redraws the diagram in milliseconds, and MNIST suites are read once.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import streamlit as st

from mtl_core.models.base import Block
from ui.charts import task_colors

SHARED_COLOURS = ("#ececec", "#555555")  # (fill, border): neutral, unlike any task


def lighten(colour: str, amount: float = 0.8) -> str:
    """A "#rrggbb" colour mixed with white (the box fill of a task's border colour)."""
    r, g, b = (int(colour[i:i + 2], 16) for i in (1, 3, 5))
    return "#" + "".join(f"{round(c + (255 - c) * amount):02x}" for c in (r, g, b))


def _q(text: str) -> str:
    """A DOT double-quoted string."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _count(n: int) -> str:
    return "no params" if n == 0 else f"{n:,} params"


def _shape_text(shape: tuple[int, ...] | None) -> str:
    return "×".join(str(s) for s in shape) if shape else ""


def branch_points(blocks: list[Block]) -> dict[str, list[str]]:
    """Source (block name or "input:k") -> its consumers, for every source whose consumers
    belong to two or more owners, at least one of them a task."""
    owner = {b.name: b.owner for b in blocks}
    consumers: dict[str, list[str]] = {}
    for block in blocks:
        for source in block.inputs:
            consumers.setdefault(source, []).append(block.name)
    out = {}
    for source, names in consumers.items():
        owners = {owner[n] for n in names}
        if len(owners) >= 2 and owners != {"shared"}:
            out[source] = names
    return out


def dot_for_blocks(blocks: list[Block], task_names: list[str],
                   input_shapes: dict[str, tuple[int, ...]] | None = None,
                   task_kinds: dict[str, str] | None = None) -> str:
    """The diagram as DOT, top to bottom (input above, task outputs below: readable when
    projected in a narrow column). Task colours follow `task_names` order, as in the charts."""
    colours = task_colors(task_names)
    input_shapes = input_shapes or {}
    task_kinds = task_kinds or {}
    lines = [
        "digraph mtl {",
        '  rankdir=TB; bgcolor="transparent"; nodesep=0.3; ranksep=0.3;',
        '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=11];',
        '  edge [color="#666666", arrowsize=0.7];',
    ]
    owners = ["shared"] + [t for t in task_names if t != "shared"]
    owners += sorted({b.owner for b in blocks} - set(owners))  # owners not in task_names
    for owner in owners:
        members = [b for b in blocks if b.owner == owner]
        if not members:
            continue
        border = colours.get(owner, "#888888")
        fill, border = SHARED_COLOURS if owner == "shared" else (lighten(border), border)
        title = "Shared" if owner == "shared" else f"Task {owner}"
        total = sum(b.params for b in members)
        lines.append(f"  subgraph {_q('cluster_' + owner)} {{")
        lines.append(f'    label={_q(f"{title} · {_count(total)}")}; style="rounded,dashed"; '
                     f'color="{border}"; fontcolor="{border}"; fontname="Helvetica-Bold";')
        for b in members:
            label = f"{b.label}\n{_count(b.params)}"
            lines.append(f'    {_q(b.name)} [label={_q(label)}, fillcolor="{fill}", '
                         f'color="{border}"];')
        lines.append("  }")

    names = {b.name for b in blocks}
    sources = {s for b in blocks for s in b.inputs}
    for source in sorted(s for s in sources if s not in names):
        key = source.removeprefix("input:")
        label = f"input {key}\n{_shape_text(input_shapes.get(key))}".strip()
        lines.append(f'  {_q(source)} [label={_q(label)}, shape=ellipse, '
                     f'fillcolor="#f2f2f2", color="#999999"];')

    branches = branch_points(blocks)
    for source in branches:
        lines.append(f'  {_q("branch:" + source)} [shape=circle, label="", width=0.16, '
                     f'style=filled, fillcolor="#222222", xlabel="branch", fontsize=10];')
        lines.append(f'  {_q(source)} -> {_q("branch:" + source)} [arrowhead=none];')

    consumed = set()
    for b in blocks:
        for source in b.inputs:
            consumed.add(source)
            start = f"branch:{source}" if source in branches else source
            lines.append(f"  {_q(start)} -> {_q(b.name)};")

    # One output node per task, after its last box (the one nobody else reads).
    for task in task_names:
        ends = [b.name for b in blocks if b.owner == task and b.name not in consumed]
        if not ends:
            continue
        border = colours.get(task, "#888888")
        kind = task_kinds.get(task, "")
        label = f"{task}\n{kind}".strip()
        lines.append(f'  {_q("out:" + task)} [label={_q(label)}, shape=plaintext, '
                     f'style="", fontcolor="{border}", fontname="Helvetica-Bold"];')
        for end in ends:
            lines.append(f'  {_q(end)} -> {_q("out:" + task)} [color="{border}"];')
    lines.append("}")
    return "\n".join(lines)


# --- building the model behind the diagram (cached) -----------------------------------------

@dataclass
class SuiteShapes:
    """What the diagram and the task rows need from a suite: no tensors."""

    tasks: list[Any]  # TaskSpec
    input_shapes: dict[str, tuple[int, ...]]
    input_kind: str
    rows: int = 0  # training pool + validation rows (sizes the step limit of a table)


@dataclass
class Diagram:
    dot: str | None
    counts: dict[str, int] = field(default_factory=dict)
    error: str | None = None  # why no diagram could be built (shown in its place)
    error_path: str | None = None  # the config field the error is about, if known


@st.cache_data(max_entries=16, show_spinner="Reading the data set…")
def cached_suite_shapes(suite: str, params_json: str, root: str) -> SuiteShapes:
    """Task specs and input shapes of a suite read from the data folder `root`. Never
    downloads: the diagram must not wait on a network; a missing data set raises DataError,
    whose message says what to put where (errors are not cached: a file put there is seen)."""
    from mtl_core.config import DataConfig
    from mtl_core.data import SUITES, load_suite

    entry = SUITES.get(suite)
    if "describe" in entry.extra and not entry.extra.get("reads_files"):
        # A generated suite: its params say every shape; generating it here would cost the
        # server up to a gigabyte (200,000 x 1,024 features) for a picture.
        checked = entry.params.model_validate(json.loads(params_json))
        tasks, input_shapes = entry.extra["describe"](checked)
        return SuiteShapes(tasks, input_shapes, entry.extra.get("input_kind", "vector"),
                           int(getattr(checked, "n_samples", 0)))
    # Defaults filled in first: an absent `download` means True for the MNIST suites.
    params = entry.params.model_validate(json.loads(params_json)).model_dump()
    if "download" in params:
        params["download"] = False
    data = load_suite(DataConfig(suite=suite, params=params), seed=0, root=Path(root))
    return SuiteShapes(list(data.tasks), dict(data.input_shapes), data.input_kind,
                       len(data.train) + len(data.val))


@st.cache_data(max_entries=64, show_spinner=False)
def cached_blocks(model_json: str, suite: str, params_json: str, tasks: tuple[str, ...]
                  ) -> tuple[list[Block], dict[str, int], dict[str, tuple[int, ...]]]:
    from mtl_core.config import ModelConfig
    from mtl_core.limits import meta_model

    shapes = cached_suite_shapes(suite, params_json, _root())
    by_name = {t.name: t for t in shapes.tasks}
    chosen = [by_name[n] for n in tasks]
    used = {t.input for t in chosen}
    inputs = {k: v for k, v in shapes.input_shapes.items() if k in used}
    # On the meta device: shapes and counts only, no weights in the server and no weights
    # file read (the widths were checked against the limits before this is called).
    model = meta_model(ModelConfig.model_validate(json.loads(model_json)), chosen, inputs)
    return model.diagram_blocks(), model.parameter_counts(), inputs


def suite_shapes(data: dict[str, Any]) -> tuple[SuiteShapes | None, str | None]:
    """(shapes, None) or (None, why not) for a data section of a config document."""
    from mtl_core.config import DataConfig
    from mtl_core.trust import path_problems

    try:
        cfg = DataConfig.model_validate(data)
        refused = path_problems(cfg.suite, cfg.params)  # a browser's path: never opened
        if refused:
            return None, refused[0][1]
        params_json = json.dumps(cfg.params, sort_keys=True)
        return cached_suite_shapes(cfg.suite, params_json, _root()), None
    except Exception as exc:  # DataError, bad params: shown in the diagram's place
        return None, _message(exc)


def build_diagram(doc: dict[str, Any]) -> Diagram:
    """The diagram for a config document (which may be invalid elsewhere: weights, lr...)."""
    from mtl_core.config import DataConfig, ModelConfig
    from mtl_core.limits import model_problems

    try:
        data = DataConfig.model_validate(doc.get("data", {}))
        model = ModelConfig.model_validate(doc.get("model", {}))
        too_big = model_problems(model)  # before anything is built, even on meta
    except Exception as exc:
        return Diagram(None, error=_message(exc))
    if too_big:
        return Diagram(None, error=f"{too_big[0][0]}: {too_big[0][1]}", error_path=too_big[0][0])
    shapes, error = suite_shapes(data.model_dump(mode="json"))
    if shapes is None:
        return Diagram(None, error=error, error_path="data")
    available = [t.name for t in shapes.tasks]
    listed = doc.get("tasks")
    tasks = [t["name"] for t in listed if t.get("name") in available] if listed else available
    if not tasks:
        return Diagram(None, error="no task included: tick at least one task")
    try:
        blocks, counts, inputs = cached_blocks(
            json.dumps(model.model_dump(mode="json"), sort_keys=True), data.suite,
            json.dumps(data.params, sort_keys=True), tuple(tasks))
    except Exception as exc:  # e.g. too many conv layers for the image size
        return Diagram(None, error=_message(exc), error_path="model.trunk.layers")
    kinds = {t.name: _kind_text(t) for t in shapes.tasks}
    return Diagram(dot_for_blocks(blocks, tasks, inputs, kinds), counts)


def _root() -> str:
    from mtl_core.data import data_dir

    return str(data_dir())


def _kind_text(task: Any) -> str:
    if task.kind == "classification" and task.num_classes:
        return f"{task.num_classes} classes"
    return str(task.kind)


def _message(exc: Exception) -> str:
    text = str(exc)
    if hasattr(exc, "errors") and callable(exc.errors):  # pydantic: first message is enough
        errs = exc.errors()
        if errs:
            loc = ".".join(str(p) for p in errs[0].get("loc", ()))
            text = f"{loc}: {errs[0].get('msg', text)}" if loc else errs[0].get("msg", text)
    return text
