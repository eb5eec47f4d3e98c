"""The experiment config: defaults, validation messages that name the field, round-trips."""
from __future__ import annotations

import pytest

from mtl_core.config import ConfigError, load_config, parse_config, save_config
from mtl_core.data import SUITES


def errors_of(document) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        parse_config(document)
    return {e.path: e.message for e in info.value.errors}


def test_empty_document_gets_every_default_and_all_tasks_of_the_suite():
    cfg = parse_config({})
    suite = SUITES.get(cfg.data.suite)
    expected = suite.extra["task_names"](suite.params())
    assert [t.name for t in cfg.tasks] == expected
    assert all(t.weight == 1.0 for t in cfg.tasks)
    assert cfg.weighting.method == "static"
    assert cfg.model.architecture == "hard_sharing"
    assert cfg.optim.lr == 0.001 and cfg.optim.batch_size == 128
    # suite params are filled in with their defaults so the run is fully described
    assert set(cfg.data.params) == set(suite.params.model_fields)


@pytest.mark.parametrize(
    ("document", "path", "fragment"),
    [
        ({"data": {"suite": "nope"}}, "data.suite", "choose one of"),
        ({"model": {"architecture": "nope"}}, "model.architecture", "hard_sharing"),
        ({"weighting": {"method": "nope"}}, "weighting.method", "static"),
        ({"optim": {"lr": 0}}, "optim.lr", "greater than 0"),
        ({"optim": {"lr": -1}}, "optim.lr", "greater than 0"),
        ({"optim": {"batch_size": 0}}, "optim.batch_size", "greater than or equal to 1"),
        ({"optim": {"epochs": 0}}, "optim.epochs", "greater than or equal to 1"),
        ({"optim": {"optimizer": "lion"}}, "optim.optimizer", "'adam'"),
        ({"optim": {"lrr": 0.1}}, "optim.lrr", "unknown field"),
        ({"log_every": 0}, "log_every", "greater than or equal to 1"),
        ({"data": {"train_fraction": 0}}, "data.train_fraction", "greater than 0"),
        ({"data": {"val_fraction": 1}}, "data.val_fraction", "less than 1"),
        ({"model": {"trunk": {"layers": [64, 0]}}}, "model.trunk.layers", "at least 1"),
        ({"model": {"trunk": {"dropout": 1.5}}}, "model.trunk.dropout", "less than 1"),
        ({"device": "tpu"}, "device", "cuda:N"),
    ],
)
def test_bad_values_are_refused_with_the_field_and_what_is_allowed(document, path, fragment):
    errors = errors_of(document)
    assert path in errors, errors
    assert fragment in errors[path]


def test_task_list_checks():
    names = parse_config({"data": {"suite": "toy_2d"}}).task_weights()
    first = next(iter(names))
    assert "tasks.0.weight" in errors_of({"data": {"suite": "toy_2d"},
                                          "tasks": [{"name": first, "weight": -1}]})
    unknown = errors_of({"data": {"suite": "toy_2d"}, "tasks": [{"name": "nope"}]})
    assert "unknown task 'nope'" in unknown["tasks.0.name"]
    assert first in unknown["tasks.0.name"]  # says which tasks exist
    dup = errors_of({"data": {"suite": "toy_2d"}, "tasks": [{"name": first}, {"name": first}]})
    assert "twice" in dup["tasks.1.name"]
    assert "at least one task" in errors_of({"data": {"suite": "toy_2d"}, "tasks": []})["tasks"]
    zero = [{"name": n, "weight": 0} for n in names]
    assert "all task weights are 0" in errors_of({"data": {"suite": "toy_2d"},
                                                  "tasks": zero})["tasks"]


def test_subset_of_tasks_and_weights_are_kept():
    names = list(parse_config({"data": {"suite": "toy_2d"}}).task_weights())
    cfg = parse_config({"data": {"suite": "toy_2d"}, "tasks": [{"name": names[-1], "weight": 0.3}]})
    assert cfg.task_weights() == {names[-1]: 0.3}


def test_plugin_params_are_validated_against_their_own_models():
    errors = errors_of({"data": {"suite": "synthetic_mmoe", "params": {"correlation": 2}}})
    assert "data.params.correlation" in errors
    errors = errors_of({"data": {"suite": "toy_2d", "params": {"bogus": 1}}})
    assert "data.params.bogus" in errors and "allowed params" in errors["data.params"]


def test_cnn_trunk_needs_an_image_suite():
    errors = errors_of({"data": {"suite": "toy_2d"}, "model": {"trunk": {"type": "cnn"}}})
    assert "image suite" in errors["model.trunk.type"]


def test_several_errors_are_reported_together():
    errors = errors_of({"optim": {"lr": 0, "batch_size": 0}, "log_every": 0})
    assert {"optim.lr", "optim.batch_size", "log_every"} <= set(errors)


def test_for_path_selects_errors_of_one_widget():
    with pytest.raises(ConfigError) as info:
        parse_config({"optim": {"lr": 0, "batch_size": 0}})
    assert [e.path for e in info.value.for_path("optim.lr")] == ["optim.lr"]
    assert len(info.value.for_path("optim")) == 2


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_save_and_load_round_trip(tmp_path, suffix):
    cfg = parse_config({"name": "rt", "data": {"suite": "toy_2d"}, "optim": {"lr": 0.05}})
    path = tmp_path / f"cfg{suffix}"
    save_config(cfg, path)
    assert load_config(path) == cfg


def test_load_reports_unreadable_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(listy)


def test_csv_without_targets_says_where_to_name_them():
    errors = errors_of({"data": {"suite": "csv", "params": {"path": "x.csv"}}})
    assert "data.params.targets" in errors["data.params"]


def test_gradnorm_needs_shared_layers():
    errors = errors_of({"data": {"suite": "toy_2d"}, "weighting": {"method": "gradnorm"},
                        "model": {"architecture": "single_task"}})
    assert "shares none" in errors["weighting.method"]
    parse_config({"data": {"suite": "toy_2d"}, "weighting": {"method": "gradnorm"}})


def test_per_task_head_layers_are_checked_and_used():
    from mtl_core.data import load_suite
    from mtl_core.models import build_model

    doc = {"data": {"suite": "toy_2d", "params": {"n_samples": 100}},
           "tasks": [{"name": "circle"}, {"name": "distance"}],
           "model": {"heads": {"layers": [8], "per_task": {"distance": [5, 3]}}}}
    cfg = parse_config(doc)
    data = load_suite(cfg.data, 0, ["circle", "distance"])
    blocks = build_model(cfg.model, data).blocks()
    widths = {t: [b.label for b in blocks if b.owner == t] for t in ("circle", "distance")}
    assert any("→8" in label for label in widths["circle"])
    assert any("→5" in label for label in widths["distance"])
    assert any("5→3" in label for label in widths["distance"])
    bad = errors_of({**doc, "model": {"heads": {"per_task": {"nope": [4]}}}})
    assert "unknown task 'nope'" in bad["model.heads.per_task.nope"]
    assert "model.heads.per_task.circle" in errors_of(
        {**doc, "model": {"heads": {"per_task": {"circle": [0]}}}})
