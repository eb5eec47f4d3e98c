"""ui.share: configs as URL tokens (the links that open the Train page with every control set)."""
from __future__ import annotations

import base64
import json
import re
import zlib
from urllib.parse import parse_qs, urlsplit

import pytest

from mtl_core.config import ConfigError, ExperimentConfig, parse_config
from ui import share


def _token_of(document: object) -> str:
    """A token made by hand (plain zlib, no preset dictionary), as a foreign link could be."""
    return base64.urlsafe_b64encode(zlib.compress(json.dumps(document).encode())).decode() \
        .rstrip("=")


CONFIGS = {
    "default": {},
    "toy, fewer tasks in their own order": {
        "name": "toy", "seed": 7, "device": "cpu",
        "data": {"suite": "toy_2d", "params": {"n_samples": 300, "noise": 0.2},
                 "train_fraction": 0.25},
        "tasks": [{"name": "xor", "weight": 2.5}, {"name": "circle", "weight": 0.0}],
        "model": {"trunk": {"layers": [32, 16], "activation": "tanh", "dropout": 0.2}},
        "optim": {"optimizer": "sgd", "lr": 0.05, "epochs": 3,
                  "early_stopping": {"patience": 2, "min_delta": 0.01}},
    },
    "per-task heads": {
        "data": {"suite": "toy_2d"},
        "model": {"heads": {"layers": [8], "per_task": {"distance": [16, 4], "xor": []}}},
    },
    "non-default method and architecture params": {
        "model": {"architecture": "mmoe", "params": {"n_experts": 6}},
        "weighting": {"method": "gradvac", "params": {"beta": 0.25, "eps": 1e-6,
                                                      "gradients": "representation"}},
    },
    "image suite with a gradient method's preference vector": {
        "data": {"suite": "multi_mnist", "params": {"shift": 3, "n_train": 500,
                                                    "download": False}},
        "model": {"trunk": {"type": "cnn", "layers": [8], "hidden": [32]}},
        "weighting": {"method": "upgrad", "params": {"pref_vector": [1.0, 2.0]}},
    },
    "image suite with an mlp trunk": {"data": {"suite": "mnist_attributes"},
                                      "model": {"trunk": {"type": "mlp", "layers": [128]}}},
    "csv params": {
        "data": {"suite": "csv", "params": {"path": "data/t v.csv", "inputs": ["a", "b"],
                                            "targets": ["y", "z"], "kinds": {"z": "binary"},
                                            "test_fraction": 0.3}},
        "tasks": [{"name": "z", "weight": 1.0}, {"name": "y", "weight": 0.5}],
    },
}


@pytest.mark.parametrize("doc", CONFIGS.values(), ids=CONFIGS.keys())
def test_a_token_gives_back_an_identical_config(doc):
    cfg = parse_config(doc)
    token = share.encode_config(cfg)
    back = share.decode_config(token)
    assert back == cfg
    assert back.to_dict() == cfg.to_dict()  # the same types too (1 is not 1.0 in YAML)
    assert re.fullmatch(r"[A-Za-z0-9_-]+", token), token  # URL-safe, no padding
    assert share.encode_config(back) == token  # stable: the same config, the same token


def test_a_token_holds_only_what_differs_from_the_defaults():
    cfg = parse_config(CONFIGS["per-task heads"])
    assert share.config_delta(cfg) == {
        "data": {"suite": "toy_2d"},
        "model": {"heads": {"layers": [8], "per_task": {"distance": [16, 4], "xor": []}}}}
    assert share.unpack_token(share.encode_config(cfg)) == share.config_delta(cfg)
    # an image suite's defaults include the cnn trunk the form picks for it
    image = parse_config({"data": {"suite": "multi_mnist"},
                          "model": {"trunk": {"type": "cnn", "layers": [16, 32],
                                              "hidden": [64]}}})
    assert share.config_delta(image) == {"data": {"suite": "multi_mnist"}}
    # every task at weight 1 is what parse_config fills in: no task list needed
    assert "tasks" not in share.config_delta(parse_config({"data": {"suite": "toy_2d"}}))
    assert "tasks" in share.config_delta(parse_config(CONFIGS["csv params"]))


def test_the_default_config_has_a_short_token_and_no_query():
    cfg = parse_config({})
    token = share.encode_config(cfg)
    assert len(token) <= 16 and share.decode_config(token) == cfg
    assert share.is_default(cfg) and share.share_query(cfg) == {}
    assert share.share_url("http://lab:8501/", cfg) == "http://lab:8501/"
    # a typical lesson config still makes a short link
    lesson = parse_config(CONFIGS["toy, fewer tasks in their own order"])
    assert len(share.encode_config(lesson)) < 200


def test_share_url_carries_the_token_and_class_mode():
    cfg = parse_config(CONFIGS["per-task heads"])
    url = share.share_url("http://lab:8501/?old=1", cfg, class_mode=True)
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path) == ("http", "lab:8501", "/")
    query = parse_qs(parts.query)
    assert query.keys() == {"cfg", "mode"} and query["mode"] == ["class"]
    assert share.decode_config(query["cfg"][0]) == cfg
    assert share.share_url("/", parse_config({}), class_mode=True) == "/?mode=class"
    assert share.share_url("http://lab:8501", parse_config({}), class_mode=True) == \
        "http://lab:8501/?mode=class"  # what st.context.url gives on the default page


@pytest.mark.parametrize("token, words", [
    ("", "empty"),
    ("not a token!", "characters"),
    ("eNqrrgUAAXUA", "cut short"),  # the default token with its last two characters lost
    ("eNqrrgUAAXUA-A", "does not unpack"),  # one character changed: a bad checksum
    ("AAAAAAAA", "does not unpack"),
    (_token_of([1, 2]), "mapping"),
    (base64.urlsafe_b64encode(zlib.compress(b"{nope")).decode().rstrip("="), "does not hold"),
    (base64.urlsafe_b64encode(zlib.compress(b" " * 2_000_000)).decode().rstrip("="),
     "far more"),
])
def test_a_damaged_token_is_a_config_error_that_says_so(token, words):
    with pytest.raises(ConfigError) as caught:
        share.decode_config(token)
    (error,) = caught.value.errors
    assert error.path == "cfg" and "damaged" in error.message and words in error.message


@pytest.mark.parametrize("document, path", [
    ({"data": {"suite": "nope"}}, "data.suite"),  # e.g. a suite this installation lacks
    ({"optim": {"lr": -1}}, "optim.lr"),
    ({"model": {"heads": {"per_task": {"nope": [4]}}}}, "model.heads.per_task.nope"),
    ({"colour": "red"}, "colour"),
])
def test_a_token_whose_config_is_not_valid_here_names_the_field(document, path):
    with pytest.raises(ConfigError) as caught:
        share.decode_config(_token_of(document))
    assert path in {e.path for e in caught.value.errors}


def test_a_delta_that_would_not_rebuild_the_config_falls_back_to_the_whole_document(
        monkeypatch: pytest.MonkeyPatch):
    cfg = parse_config(CONFIGS["per-task heads"])
    monkeypatch.setattr(share, "config_delta", lambda c: {})  # a delta that loses fields
    token = share.encode_config(cfg)
    assert share.unpack_token(token) == cfg.to_dict() and share.decode_config(token) == cfg


def test_config_equality_sees_a_changed_field():
    """The round-trip assertions above mean something: `==` compares every field."""
    cfg = parse_config(CONFIGS["per-task heads"])
    other = cfg.model_copy(deep=True)
    other.model.heads.per_task["distance"] = [16, 5]
    assert other != cfg and isinstance(cfg, ExperimentConfig)
