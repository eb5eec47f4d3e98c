"""Helpers shared by the AppTest (streamlit.testing) tests: reading the Plotly figures a page
drew back as plain JSON."""
from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np
from streamlit.testing.v1 import AppTest


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
