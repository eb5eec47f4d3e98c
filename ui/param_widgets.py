"""Streamlit widgets for the config form, generic over pydantic params models.

Every widget is keyed (ui.config_form keys), takes its value from session_state (filled by
ui.config_form before the page renders, so no `value=` argument is ever passed) and keeps it
across pages (`persist_state="session"`). Validation messages are drawn right under the widget
they are about.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import streamlit as st
from pydantic import BaseModel

from mtl_core.config import ConfigError, FieldError
from ui.config_form import (
    FieldSpec,
    errors_at,
    field_specs,
    list_item_default,
    value_to_state,
)
from ui.text import md_text

KEEP: dict[str, Any] = {"persist_state": "session"}  # widget values survive page switches
MAX_LAYERS = 8


def show_errors(errors: Sequence[FieldError], with_path: bool = False) -> None:
    """Messages under a widget; `with_path` names the field (its widget is not drawn)."""
    for err in errors:
        st.error(md_text(err if with_path else err.message), icon=":material/error:")


def ensure(key: str, default: Any) -> None:
    """Give a widget its starting value through session_state (never through `value=`)."""
    if key not in st.session_state:
        st.session_state[key] = default


def _label(name: str) -> str:
    return name.replace("_", " ").capitalize()


def layer_editor(key: str, label: str, *, help: str | None = None,
                 max_layers: int = MAX_LAYERS, unit: str = "width") -> None:
    """A list of ints as "how many layers" plus one width per layer, on one row."""
    ensure(f"{key}.n", 0)
    count_col, widths_col = st.columns([1, 3], vertical_alignment="bottom")
    n = count_col.number_input(f"{label}: layers", min_value=0,
                               max_value=max(max_layers, int(st.session_state[f"{key}.n"])),
                               step=1, key=f"{key}.n", help=help, **KEEP)
    if not n:
        widths_col.caption("no layers")
        return
    cols = widths_col.columns(int(n))
    for i, col in enumerate(cols):
        item = f"{key}.{i}"
        ensure(item, list_item_default(st.session_state, key, i))
        col.number_input(f"{unit} {i + 1}", min_value=1, step=8, key=item, **KEEP)


def field_widget(spec: FieldSpec, key: str, errors: ConfigError | None, path: str) -> None:
    """One params field: slider/number for numbers, checkbox, selectbox, text, layer list."""
    label, help_text = _label(spec.name), spec.description or None
    if spec.kind == "int_list":
        ensure(f"{key}.n", len(spec.default or []))
        layer_editor(key, label, help=help_text)
    else:
        for k, v in value_to_state(spec, key, spec.default).items():
            ensure(k, list(v) if isinstance(v, list) else v)
        _scalar_widget(spec, key, label, help_text)
    show_errors(errors_at(errors, path))


def _scalar_widget(spec: FieldSpec, key: str, label: str, help_text: str | None) -> None:
    if spec.kind == "bool":
        st.checkbox(label, key=key, help=help_text, **KEEP)
    elif spec.kind == "choice":
        st.selectbox(label, list(spec.options), key=key, help=help_text, **KEEP)
    elif spec.kind in ("int", "float"):
        cast = int if spec.kind == "int" else float
        low = cast(spec.low) if spec.low is not None else None
        high = cast(spec.high) if spec.high is not None else None
        if spec.slider:
            st.slider(label, low, high, step=cast(spec.step), key=key, help=help_text, **KEEP)
        else:
            st.number_input(label, min_value=low, max_value=high, step=cast(spec.step),
                            key=key, help=help_text,
                            placeholder="default" if spec.optional else None,
                            format=None if spec.kind == "int" else "%g", **KEEP)
    elif spec.kind == "str_list":
        current = list(st.session_state.get(key) or [])
        st.multiselect(label, current, key=key, help=help_text, accept_new_options=True,
                       **KEEP)
    elif spec.kind == "str":
        st.text_input(label, key=key, help=help_text, **KEEP)
    else:  # anything else is edited as inline YAML
        st.text_input(f"{label} (YAML)", key=key, help=help_text, **KEEP)


def params_widgets(model: type[BaseModel], key: str, errors: ConfigError | None,
                   path: str, skip: Sequence[str] = (),
                   only: Callable[[str], bool] | None = None) -> None:
    """Widgets for every field of a params model; `path` is the config path of the params
    ("data.params"), used to put each validation message under its widget. `only`, given a
    field's config path, says whether to draw it (class mode); a field not drawn keeps its
    value, and its messages still show."""
    specs = [s for s in field_specs(model) if s.name not in skip]
    if not specs:
        st.caption("No parameters.")
    if only is not None:
        hidden = [s for s in specs if not only(f"{path}.{s.name}")]
        specs = [s for s in specs if s not in hidden]
        for spec in hidden:
            show_errors(errors_at(errors, f"{path}.{spec.name}"), with_path=True)
    # Two per row keeps long params lists (synthetic_tabular has ten) on one projector screen;
    # a layer list gets a row of its own.
    for row in _rows(specs):
        cols = [st.container()] if row[0].kind == "int_list" else st.columns(2)
        for col, spec in zip(cols, row, strict=False):
            with col:
                field_widget(spec, f"{key}.{spec.name}", errors, f"{path}.{spec.name}")
    show_errors(errors_at(errors, path, exact=True))  # e.g. "allowed params for ..."


def _rows(specs: list[FieldSpec], per_row: int = 2) -> list[list[FieldSpec]]:
    rows: list[list[FieldSpec]] = []
    for spec in specs:
        wide = spec.kind == "int_list"
        if wide or not rows or len(rows[-1]) == per_row or rows[-1][0].kind == "int_list":
            rows.append([spec])
        else:
            rows[-1].append(spec)
    return rows
