"""The csv suite's controls: upload a table, preview it, pick input/target columns and kinds.

An uploaded file is saved under <runs dir>/uploads/ with its content hash in the name (the
worker process reads it from there, and a changed file never overwrites one an earlier run
used); `data.params.path` then points at it, so the config stays a plain, reproducible file.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import streamlit as st

from mtl_core.config import ConfigError
from mtl_core.data import SUITES, TASK_KINDS
from ui import config_form as form
from ui.param_widgets import KEEP, ensure, params_widgets, show_errors
from ui.state import runs_dir
from ui.text import md_lines, md_text

KEY = form.suite_key("csv")
UPLOAD_KEY = "upload.csv"
_SAVED = "_csv_saved_file_id"
PREVIEW_ROWS = 8


def save_upload(name: str, content: bytes, folder: Path) -> Path:
    """Write an uploaded file once per content; return its path."""
    digest = hashlib.sha256(content).hexdigest()[:10]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{digest}-{Path(name).name[-80:]}"  # a browser's name: no folders
    if not path.exists():
        path.write_bytes(content)
    return path


@st.cache_data(max_entries=8, show_spinner=False)
def _preview(path: str, mtime: float) -> pd.DataFrame:
    return pd.read_csv(path, nrows=500)


def _read_preview(path_text: str, errors_name_path: bool = False
                  ) -> tuple[pd.DataFrame | None, str | None]:
    """The first rows of the table, or why not. The path comes from a browser: a file
    outside the allowed roots is never opened (mtl_core.trust), so nothing of it is shown."""
    if not path_text.strip():
        return None, None
    from mtl_core.trust import inside_roots, refusal

    path = inside_roots(path_text)
    if path is None:  # the form's validation says so under the path box (same words)
        return None, None if errors_name_path else refusal(path_text)
    if not path.is_file():
        return None, f"file not found: {path_text[:200]}"
    try:
        return _preview(str(path), path.stat().st_mtime), None
    except Exception as exc:  # a broken file (inside the roots): say so next to the path
        return None, f"cannot read {path} as CSV: {str(exc)[:200]}"


def _take_upload() -> None:
    """Save a newly uploaded file and point the form at it (before those widgets render)."""
    upload = st.session_state.get(UPLOAD_KEY)
    if upload is None or st.session_state.get(_SAVED) == upload.file_id:
        return
    path = save_upload(upload.name, upload.getvalue(), runs_dir() / "uploads")
    st.session_state[_SAVED] = upload.file_id
    st.session_state[f"{KEY}.path"] = str(path)
    for key in (f"{KEY}.inputs", f"{KEY}.targets"):  # the old columns mean nothing now
        st.session_state[key] = []


def csv_section(errors: ConfigError | None) -> None:
    st.file_uploader("Upload a CSV table", type=["csv"], key=UPLOAD_KEY,
                     help="One row per sample; numeric input columns; each target column "
                          "becomes a task.")
    _take_upload()
    ensure(f"{KEY}.path", "")
    st.text_input("CSV path", key=f"{KEY}.path", help="Saved here when you upload; or type a "
                  "path (relative paths are also looked up in the data folder).", **KEEP)
    show_errors(form.errors_at(errors, "data.params.path"))
    frame, problem = _read_preview(st.session_state[f"{KEY}.path"],
                                   bool(form.errors_at(errors, "data.params.path")))
    if problem:
        st.error(md_lines(problem), icon=":material/error:")  # it names the file
    if frame is None:
        st.caption("Upload a CSV file or give its path to pick columns.")
        return
    st.dataframe(frame.head(PREVIEW_ROWS), height=240)
    st.caption(f"{len(frame.columns)} columns; first {PREVIEW_ROWS} rows shown.")
    columns = [str(c) for c in frame.columns]
    for key in (f"{KEY}.inputs", f"{KEY}.targets"):
        ensure(key, [])
    selected = set(st.session_state[f"{KEY}.inputs"]) | set(st.session_state[f"{KEY}.targets"])
    options = columns + sorted(selected - set(columns))  # keep loaded choices visible
    st.multiselect("Target columns (one task each)", options, key=f"{KEY}.targets", **KEEP)
    show_errors(form.errors_at(errors, "data.params.targets"))
    st.multiselect("Input columns (empty: every other column)", options,
                   key=f"{KEY}.inputs", **KEEP)
    show_errors(form.errors_at(errors, "data.params.inputs"))
    targets = st.session_state[f"{KEY}.targets"]
    if targets:
        cols = st.columns(min(len(targets), 4))
        for i, target in enumerate(targets):
            key = f"{form.CSV_KINDS}.{target}"
            ensure(key, "auto")
            cols[i % len(cols)].selectbox(f"Kind of {md_text(target)}", ["auto", *TASK_KINDS],
                                          key=key, help="auto guesses from the values.", **KEEP)
    show_errors(form.errors_at(errors, "data.params.kinds"))
    params_widgets(SUITES.get("csv").params, KEY, errors, "data.params",
                   skip=("path", "inputs", "targets", "kinds"))
