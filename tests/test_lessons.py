"""Lessons: complete content, valid presets that train, knobs that exist; and the toy_2d
`distance_scale` param the loss-scale lesson relies on."""
from __future__ import annotations

import math
import re

import pytest
import torch
from idx_files import write_fake_mnist

from mtl_core.config import load_config, parse_config
from mtl_core.data import SUITES
from mtl_core.lessons import LESSONS, LESSONS_DIR, get_lesson, knob_value, load_preset
from mtl_core.sink import MemorySink
from mtl_core.trainer import train

PRESETS = [(lesson, i) for lesson in LESSONS for i in range(len(lesson.presets))]
MAX_STEPS = 3000  # the budget guard behind "finishes in well under a minute on 2 cores"


def _sentences(text: str) -> list[str]:
    text = text.replace("et al.", "et al")
    return [s for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])", text.strip()) if s]


def test_there_are_at_least_six_lessons_with_unique_ids():
    assert len(LESSONS) >= 6
    assert len({lesson.id for lesson in LESSONS}) == len(LESSONS)
    assert get_lesson("loss_scales").title.startswith("Loss scales")
    with pytest.raises(KeyError, match="unknown lesson"):
        get_lesson("nope")


@pytest.mark.parametrize("lesson", LESSONS, ids=lambda lesson: lesson.id)
def test_every_field_is_filled_in(lesson):
    assert lesson.title.strip() and lesson.question.strip().endswith("?")
    assert 3 <= len(_sentences(lesson.text)) <= 6, _sentences(lesson.text)
    assert lesson.look_for and all(item.strip() for item in lesson.look_for)
    assert lesson.presets and len(lesson.variants) == len(lesson.presets)
    assert all(v.strip() for v in lesson.variants)
    assert lesson.knobs and all(k.strip() for k in lesson.knobs)


def test_every_preset_file_belongs_to_a_lesson():
    used = {name for lesson in LESSONS for name in lesson.presets}
    assert used == {p.name for p in LESSONS_DIR.glob("*.yaml")}


@pytest.mark.parametrize("lesson", LESSONS, ids=lambda lesson: lesson.id)
def test_knobs_are_config_paths_of_the_presets(lesson):
    configs = [load_preset(lesson, i) for i in range(len(lesson.presets))]
    for knob in lesson.knobs:
        found = []
        for cfg in configs:
            try:
                found.append(knob_value(cfg, knob))
            except KeyError:
                pass
        assert found, f"{lesson.id}: knob {knob!r} is in none of its presets"


def test_two_presets_of_a_lesson_differ_in_a_knob():
    for lesson in LESSONS:
        if len(lesson.presets) < 2:
            continue
        a, b = (load_preset(lesson, i).to_dict() for i in (0, 1))
        differing = [k for k in lesson.knobs if _get(a, k) != _get(b, k)]
        assert differing, f"{lesson.id}: A and B differ in none of the knobs"


def _get(doc, path):
    try:
        return knob_value(doc, path)
    except KeyError:
        return None


def test_knob_value_walks_dicts_and_lists():
    cfg = load_preset("loss_scales", 0)
    assert knob_value(cfg, "data.params.distance_scale") == 10.0
    assert knob_value(cfg, "tasks.1.name") == "distance"
    assert knob_value(cfg, "weighting.method") == "static"
    for bad in ("data.params.nope", "tasks.7.name", "optim.lr.x"):
        with pytest.raises(KeyError):
            knob_value(cfg, bad)
    with pytest.raises(IndexError):
        load_preset("branch_point", 1)


@pytest.mark.parametrize("lesson, variant", PRESETS,
                         ids=[f"{lesson.id}-{i}" for lesson, i in PRESETS])
def test_preset_validates_and_a_short_version_finishes(lesson, variant, isolated_dirs):
    cfg = load_preset(lesson, variant)
    assert cfg == load_config(lesson.preset_paths[variant])
    # Generated data, or MNIST (here: tiny fake IDX files, never a download).
    assert cfg.data.suite in ("toy_2d", "synthetic_mmoe", "synthetic_tabular", "digit_boxes")
    pool = cfg.data.params.get("n_samples") or cfg.data.params["n_train"]
    n_train = pool * (1 - cfg.data.val_fraction) * cfg.data.train_fraction
    steps = cfg.optim.epochs * math.ceil(n_train / cfg.optim.batch_size)
    assert steps <= MAX_STEPS, steps

    doc = cfg.to_dict()
    doc.update(device="cpu")
    doc["optim"]["epochs"] = 1
    if cfg.data.suite == "digit_boxes":
        write_fake_mnist(isolated_dirs.parent / "data", n_train=80, n_test=20)
        doc["data"]["params"].update(n_train=0, n_test=0, download=False)
    else:
        doc["data"]["params"].update(n_samples=200, n_test=50)
    result = train(parse_config(doc), MemorySink())
    assert result.status == "finished", result.message
    assert set(result.summary["test"]) == set(cfg.task_weights())


# --- toy_2d distance_scale (added for the loss-scale lesson) ---------------------------------


def _toy(**params):
    entry = SUITES.get("toy_2d")
    return entry.build(entry.params(n_samples=100, n_test=20, **params), seed=3, data_dir=".")


def test_distance_scale_stretches_only_the_distance_target():
    plain, scaled = _toy(), _toy(distance_scale=10.0)
    for split in ("train", "test"):
        a, b = getattr(plain, split), getattr(scaled, split)
        assert torch.allclose(b.targets["distance"], 10 * a.targets["distance"])
        assert torch.equal(a.inputs["x"], b.inputs["x"])
        for task in ("circle", "xor", "spiral"):
            assert torch.equal(a.targets[task], b.targets[task])
    # The original radius is still y * target_scale + mean.
    assert scaled.task("distance").target_scale == pytest.approx(
        plain.task("distance").target_scale / 10)
    assert scaled.train.targets["distance"].std().item() == pytest.approx(10.0, rel=1e-4)


def test_distance_scale_must_be_positive():
    with pytest.raises(Exception, match="greater than 0"):
        parse_config({"data": {"suite": "toy_2d", "params": {"distance_scale": 0}}})


# --- submit-time checks (the CLI's and the pages' mtl_core.preflight.check_submit) ----------


@pytest.mark.parametrize("lesson, variant", PRESETS,
                         ids=[f"{lesson.id}-{i}" for lesson, i in PRESETS])
def test_every_preset_passes_the_submit_checks_without_its_data(lesson, variant, isolated_dirs):
    """What `python -m mtl_core train <preset>` and "Run this lesson" check before queueing:
    no data is read (MTL_DATA_DIR is an empty folder here), the model is sized from the
    suite's describe hook."""
    from mtl_core.limits import count_parameters
    from mtl_core.preflight import check_submit

    cfg = load_preset(lesson, variant).model_copy(update={"device": "cpu"})
    check_submit(cfg)
    assert sum(count_parameters(cfg).values()) > 0
    assert not (isolated_dirs.parent / "data").exists()  # nothing read, nothing downloaded
