"""The Train page behind the trust boundary (issue 10): a link, a YAML upload or the CSV path
box naming a file outside the allowed roots is refused and nothing of the file is shown or
stored; a huge-width link builds nothing; an alias bomb and a 200,000-deep link settle fast."""
from __future__ import annotations

import base64
import json
import time
import zlib
from pathlib import Path

import pytest
from app_support import form_widget, yaml_upload
from streamlit.testing.v1 import AppTest
from streamlit.testing.v1 import app_test as app_test_module
from test_app_train import APP, _NavigationPagesManager
from test_trust import _bomb, _traversal

SECRET = "hunter2-TOPSECRET"
HEADER = "shadowcolumn"


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "outside" / "shadow"
    path.parent.mkdir()
    path.write_text(f"{HEADER},x\n" + "".join(f"{SECRET},{i}\n" for i in range(20)))
    return path


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(app_test_module, "PagesManager", _NavigationPagesManager)
    return AppTest.from_file(APP, default_timeout=60)



def _token(document: dict | bytes) -> str:
    raw = document if isinstance(document, bytes) else json.dumps(document).encode()
    return base64.urlsafe_b64encode(zlib.compress(raw, 9)).decode().rstrip("=")


def _page_text(at: AppTest) -> str:
    """Everything the page shows, as one string (elements' protos, tables included)."""
    parts = [str(el.proto) for el in at.main] + [str(el.proto) for el in at.sidebar]
    parts += [str(df.value) for df in at.dataframe]
    return "\n".join(parts)


def _csv_doc(path: str) -> dict:
    return {"data": {"suite": "csv", "params": {"path": path, "targets": ["x"]}}}


@pytest.mark.parametrize("how", ["absolute", "traversal"])
def test_a_shadow_file_link_shows_nothing_of_the_file(app, secret, how):
    path = str(secret) if how == "absolute" else _traversal(secret)
    app.query_params["cfg"] = _token(_csv_doc(path))
    at = app.run()
    assert not at.exception
    errors = " ".join(e.value for e in at.error)
    assert "not loaded" in errors and "allowed folders" in errors
    assert not at.dataframe
    text = _page_text(at)
    assert SECRET not in text and HEADER not in text
    # nothing loaded
    assert form_widget(at, "selectbox", "cfg.data.suite").value == "synthetic_mmoe"


def test_a_yaml_upload_naming_a_file_outside_is_refused(app, secret):
    at = app.run()
    yaml_upload(at).set_value(
        ("evil.yaml", json.dumps(_csv_doc(str(secret))).encode(), "text/yaml"))
    at.run()
    assert not at.exception
    errors = " ".join(e.value for e in at.error)
    assert "evil.yaml was not loaded" in errors and "allowed folders" in errors
    assert not at.dataframe and SECRET not in _page_text(at)
    assert form_widget(at, "selectbox", "cfg.data.suite").value == "synthetic_mmoe"


def test_the_csv_path_box_refuses_a_file_outside_and_start_stays_disabled(app, secret):
    at = app.run()
    form_widget(at, "selectbox", "cfg.data.suite").set_value("csv").run()
    form_widget(at, "text_input", "cfg.data.params.csv.path").set_value(str(secret)).run()
    assert not at.exception
    assert not at.dataframe
    assert any("allowed folders" in e.value for e in at.error)
    assert at.button(key="train.start").disabled
    text = _page_text(at)
    assert SECRET not in text and HEADER not in text


def test_a_huge_width_link_is_refused_and_builds_nothing(app, built):
    app.query_params["cfg"] = _token({"data": {"suite": "toy_2d"},
                                      "model": {"trunk": {"layers": [100_000, 100_000]}}})
    at = app.run()
    assert not at.exception
    errors = " ".join(e.value for e in at.error)
    assert "model.trunk.layers.0" in errors and "4,096" in errors
    assert set(built) <= {"meta"}  # the default form's diagram: meta only


def test_wide_layers_from_the_form_are_refused_next_to_the_control(app, built):
    at = app.run()
    form_widget(at, "number_input", "cfg.model.trunk.layers.0").set_value(100_000).run()
    assert not at.exception and at.button(key="train.start").disabled
    assert any("4,096" in e.value for e in at.error)
    assert set(built) <= {"meta"}


def test_an_alias_bomb_upload_settles_quickly(app):
    at = app.run()
    start = time.perf_counter()
    yaml_upload(at).set_value(("bomb.yaml", _bomb(7).encode(),
                                                   "text/yaml"))
    at.run()
    assert time.perf_counter() - start < 20
    assert not at.exception
    errors = " ".join(e.value for e in at.error)
    assert "bomb.yaml was not loaded" in errors and "alias" in errors and len(errors) < 1000


def test_a_deeply_nested_link_says_so_without_a_traceback(app):
    app.query_params["cfg"] = _token(b'{"data": ' + b"[" * 200_000)
    at = app.run()
    assert not at.exception
    errors = " ".join(e.value for e in at.error)
    assert "not loaded" in errors and "deep" in errors and len(errors) < 1000


def test_a_binary_yaml_upload_is_refused_clearly(app):
    at = app.run()
    yaml_upload(at).set_value(("x.yaml", b"\x00\x01\xff" * 50,
                                                   "text/yaml"))
    at.run()
    assert not at.exception
    assert any("binary" in e.value for e in at.error)
