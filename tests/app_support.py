"""Helpers shared by the AppTest (streamlit.testing) tests: reading the Plotly figures a page
drew back as plain JSON, and the Train page's tabs and panels that draw only when opened."""
from __future__ import annotations

import base64
import json
import re
from typing import Any

import numpy as np
import pandas as pd
import yaml
from streamlit.testing.v1 import AppTest

from ui.text import WORD_JOINER
from ui.train_run import FORM_TAB_KEY, FORM_TABS, SHARE_PANEL_KEY, YAML_PANEL_KEY


def decode(obj: Any) -> Any:
    """Plotly JSON with its typed arrays ({"dtype", "bdata", "shape"}) turned into lists."""
    if isinstance(obj, dict):
        if "bdata" in obj and "dtype" in obj:
            arr = np.frombuffer(base64.b64decode(obj["bdata"]), dtype=np.dtype(obj["dtype"]))
            if "shape" in obj:
                arr = arr.reshape([int(n) for n in str(obj["shape"]).split(",")])
            return arr.tolist()
        return {k: decode(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [decode(v) for v in obj]
    return obj


def plotly_figures(at: AppTest) -> dict[str, dict]:
    """Plotly figures on the page as {widget key: figure JSON with plain lists}."""
    return {el.key or el.proto.id: decode(json.loads(el.proto.spec))
            for el in at.get("plotly_chart")}


def open_train_panel(at: AppTest, panel_key: str) -> AppTest:
    """Open a Train-page panel that draws its content only when open (and run the page)."""
    at.session_state[panel_key] = True
    return at.switch_page("pages/train.py").run()


def yaml_upload(at: AppTest):
    """The Train page's YAML upload (in the "Config as YAML" panel)."""
    return open_train_panel(at, YAML_PANEL_KEY).file_uploader(key="upload.yaml")


def reset_button(at: AppTest):
    """The Train page's "Reset to defaults" (in the "Config as YAML" panel)."""
    return open_train_panel(at, YAML_PANEL_KEY).button(key="train.reset")


def _opened_code(at: AppTest, panel_key: str, yaml_code: bool) -> str:
    """The code block of a Train-page panel, opening the panel (a rerun) if it is closed."""
    def find() -> str | None:
        return next((c.value for c in at.code if (c.language == "yaml") == yaml_code), None)

    if find() is None:
        open_train_panel(at, panel_key)
    found = find()
    assert found is not None, f"no code block in the {panel_key} panel"
    return found


def config_shown(at: AppTest) -> dict:
    """The config exactly as the Train page shows it in "Config as YAML"."""
    return yaml.safe_load(_opened_code(at, YAML_PANEL_KEY, yaml_code=True))


def share_link_shown(at: AppTest) -> str:
    """The link of the Train page's "Share link" panel."""
    return _opened_code(at, SHARE_PANEL_KEY, yaml_code=False)


def walk_nodes(node: Any):
    """A block and everything under it, in page order."""
    yield node
    for child in getattr(node, "children", {}).values():
        yield from walk_nodes(child)


def widget_keys(block: Any) -> list[str]:
    """Keys of every keyed widget drawn in a block (main area or sidebar), in page order."""
    return [n.key for n in walk_nodes(block) if isinstance(getattr(n, "key", None), str)]


def open_form_tab(at: AppTest, tab: str) -> AppTest:
    """Open one of the Train page's form tabs (only the open one draws its controls)."""
    at.session_state[FORM_TAB_KEY] = tab
    return at.switch_page("pages/train.py").run()


def form_widget(at: AppTest, kind: str, key: str) -> Any:
    """A Train-page control by key, opening the form tab that holds it if need be."""
    def find() -> Any:
        try:
            return getattr(at, kind)(key=key)
        except KeyError:
            return None

    found = find()
    for tab in FORM_TABS:
        if found is not None:
            break
        found = find() if open_form_tab(at, tab) else None
    assert found is not None, f"no {kind} {key!r} in any tab of the Train page"
    return found


def form_keys(at: AppTest) -> list[str]:
    """Keys of the widgets in the Train page's main area over every form tab, in tab order
    (the tab open before is open again after)."""
    was = at.session_state[FORM_TAB_KEY] if FORM_TAB_KEY in at.session_state else FORM_TABS[0]
    keys: list[str] = []
    for tab in FORM_TABS:
        keys += [k for k in widget_keys(open_form_tab(at, tab).main) if k not in keys]
    open_form_tab(at, was)
    return keys


def visible(body: str) -> str:
    """What a reader sees of a Markdown body whose user text ui.text escaped: backslash
    escapes resolved, word joiners (invisible) dropped."""
    return re.sub(r"\\(.)", r"\1", body).replace(WORD_JOINER, "")


def latest_numbers(at: AppTest) -> pd.DataFrame:
    """The live panel's "Latest numbers" (a Markdown table) read back as the text cells a reader
    sees (escapes resolved, ui.text's word joiners dropped), indexed by task."""
    text = next(m.value for m in at.markdown if m.value.startswith("**Latest numbers**"))
    rows = [[visible(c.strip()) for c in re.split(r"(?<!\\)\|", line)[1:-1]]
            for line in text.splitlines() if line.startswith("|")]
    head, body = rows[0], rows[2:]  # rows[1] is the |---| rule
    return pd.DataFrame([r[1:] for r in body], columns=head[1:],
                        index=pd.Index([r[0] for r in body], name=head[0] or None))


def open_at_run(at: AppTest, run_id: str | None = None, state: dict | None = None) -> AppTest:
    """Open `at` on `run_id` (as ?run=) with `state` in the session, run it, check it ran."""
    if run_id:
        at.query_params["run"] = run_id
    for key, value in (state or {}).items():
        at.session_state[key] = value
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    return at
