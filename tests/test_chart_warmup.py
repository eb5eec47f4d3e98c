"""The Train page has the browser load Plotly's code in its idle time (ui.chart_warmup)."""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from ui import chart_warmup

STATIC_JS = Path(st.__file__).parent / "static" / "static" / "js"


def test_the_chunk_is_the_module_streamlits_own_loader_imports():
    chunk = chart_warmup.plotly_chunk()
    assert chunk is not None and (STATIC_JS / chunk).is_file()
    # The main bundle imports it by this name, relative to itself: the script's import()
    # (resolved against the main bundle's URL) then loads the very module the charts use.
    main = [p for p in STATIC_JS.glob("index.*.js") if f"import(`./{chunk}`)" in p.read_text()]
    assert len(main) == 1


def test_the_script_imports_that_chunk_once_per_page_load_once_the_page_is_drawn():
    script = chart_warmup.warmup_script("PlotlyChart.abc.js", ".st-key-go button")
    assert script.startswith("<script>") and script.endswith("</script>")
    assert 'const chunk = "PlotlyChart.abc.js", after = ".st-key-go button";' in script
    assert "window.__mtlChartsWarm" in script and '"notRunning"' in script
    assert "import(new URL(chunk, base).href)" in script
