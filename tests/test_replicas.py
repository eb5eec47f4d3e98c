"""Stacked runs (`replicas: K`): replica i is the run of seed + i, and replicas stay apart."""
from __future__ import annotations

import math

import pytest
import torch
from idx_files import write_fake_mnist

from mtl_core import replicas as R
from mtl_core.config import ConfigError, parse_config
from mtl_core.data import load_suite
from mtl_core.models import build_model
from mtl_core.sink import MemorySink, row_replica
from mtl_core.trainer import train

REL = 1e-4  # "equal up to floating-point reordering" over a short run


def rows_of(sink: MemorySink, replica: int = 0) -> dict[tuple, float]:
    return {(r[0], r[2], r[3], r[4]): r[5] for r in sink.rows if row_replica(r) == replica}


def assert_same(a: dict[tuple, float], b: dict[tuple, float]) -> None:
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))[:5]
    for key, x in a.items():
        y = b[key]
        if math.isnan(x) and math.isnan(y):  # e.g. GradDrop's weights: it has none
            continue
        assert math.isclose(x, y, rel_tol=REL, abs_tol=1e-6), (key, x, y)


def stacked_and_single(doc: dict, k: int) -> tuple[object, MemorySink, list[MemorySink]]:
    sink = MemorySink()
    result = train(parse_config({**doc, "replicas": k}), sink)
    singles = []
    for i in range(k):
        one = MemorySink()
        train(parse_config({**doc, "seed": doc.get("seed", 0) + i}), one)
        singles.append(one)
    return result, sink, singles


def engine_of(doc: dict) -> str:
    cfg = parse_config(doc)
    names = [t.name for t in cfg.tasks or []]
    reps = R.build_replicas(cfg, torch.device("cpu"), names, 4)
    engine = R.choose_engine(cfg, reps)
    if engine == "stacked":
        specs = [reps[0].data.task(n) for n in names]
        if R.StackedModel.build([r.model for r in reps], specs) is None:
            return "loop"
    return engine


def test_replica_initial_weights_are_those_of_its_seed(tiny_doc):
    cfg = parse_config(tiny_doc({"replicas": 3, "seed": 5, "model": {"architecture": "mmoe"}}))
    names = [t.name for t in cfg.tasks or []]
    reps = R.build_replicas(cfg, torch.device("cpu"), names, 4)
    for i, rep in enumerate(reps):
        torch.manual_seed(5 + i)
        data = load_suite(cfg.data, 5 + i, names)
        torch.manual_seed(5 + i)
        alone = build_model(cfg.model, data)
        assert rep.seed == 5 + i
        for (name, p), (_, q) in zip(rep.model.named_parameters(), alone.named_parameters(),
                                     strict=True):
            assert torch.equal(p, q), name
        # its batch order is the single run's: the same generator, seeded the same way
        assert torch.equal(torch.randperm(50, generator=rep.order_rng),
                           torch.randperm(50, generator=torch.Generator().manual_seed(5 + i)))
    assert not torch.equal(reps[0].model.shared[0][0].net[0].weight,
                           reps[1].model.shared[0][0].net[0].weight)


def test_slots_of_one_seed_build_its_data_once_and_start_equal(tiny_doc, monkeypatch):
    """A sweep's points share a seed: its data is built once, every slot still gets its own
    model and splits, equal to the slot built alone, and the random state after building."""
    cfg = parse_config(tiny_doc({"seed": 3, "model": {"architecture": "mmoe"}}))
    names = [t.name for t in cfg.tasks or []]
    calls = []
    real_load = R.load_suite
    monkeypatch.setattr(R, "load_suite", lambda *a, **k: calls.append(a[1]) or real_load(*a, **k))
    slots = [(3, [1.0, 1.0]), (3, [0.5, 1.5]), (4, [1.0, 1.0]), (3, [2.0, 0.1])]
    reps = R.build_replicas(cfg, torch.device("cpu"), names, 4, slots)
    assert calls == [3, 4]
    alone = R.build_replicas(cfg, torch.device("cpu"), names, 4, [(3, [2.0, 0.1])])[0]
    last = reps[3]
    assert last.model is not reps[0].model and last.data is not reps[0].data
    for (name, p), (_, q) in zip(last.model.named_parameters(), alone.model.named_parameters(),
                                 strict=True):
        assert torch.equal(p, q), name
    assert torch.equal(last.rng_state[0], alone.rng_state[0])
    assert last.weight_values == [2.0, 0.1]
    with torch.no_grad():  # the copies are independent: training one moves no other
        next(reps[1].model.parameters()).add_(1.0)
    assert torch.equal(next(reps[0].model.parameters()), next(alone.model.parameters()))


@pytest.mark.parametrize("architecture", ["hard_sharing", "mmoe", "cross_stitch", "mtan",
                                          "single_task"])
def test_each_replica_equals_the_run_of_its_seed(tiny_doc, architecture):
    doc = tiny_doc({"model": {"architecture": architecture}})
    assert engine_of({**doc, "replicas": 3}) == "stacked"
    result, sink, singles = stacked_and_single(doc, 3)
    assert result.status == "finished"
    for i, one in enumerate(singles):
        assert_same(rows_of(one), rows_of(sink, i))
    # the replicas really differ (different seeds), so the comparison above means something
    assert rows_of(sink, 0)[(1, "train", "total", "loss")] != \
        rows_of(sink, 1)[(1, "train", "total", "loss")]


def test_cnn_trunk_replicas_equal_their_runs(tiny_doc, isolated_dirs):
    write_fake_mnist(isolated_dirs.parent / "data", n_train=120, n_test=40)
    doc = tiny_doc({"model": {"trunk": {"type": "cnn", "layers": [4, 4], "hidden": [8]},
                              "heads": {"layers": []}},
                    "optim": {"batch_size": 32, "epochs": 2}})
    doc["data"] = {"suite": "mnist_attributes", "params": {}}
    assert engine_of({**doc, "replicas": 2}) == "stacked"
    _, sink, singles = stacked_and_single(doc, 2)
    for i, one in enumerate(singles):
        assert_same(rows_of(one), rows_of(sink, i))


@pytest.mark.parametrize("method, params", [
    ("uncertainty", {}), ("dwa", {}), ("famo", {}), ("rlw", {}), ("gradnorm", {}),
    ("pcgrad", {}), ("mgda", {}), ("upgrad", {}), ("graddrop", {}),
    ("mgda", {"gradients": "representation"}),
])
def test_weighting_methods_per_replica_equal_single_runs(tiny_doc, method, params):
    doc = tiny_doc({"weighting": {"method": method, "params": params},
                    "optim": {"epochs": 2}})
    _, sink, singles = stacked_and_single(doc, 2)
    for i, one in enumerate(singles):
        assert_same(rows_of(one), rows_of(sink, i))


def test_dropout_replicas_draw_their_own_masks(tiny_doc):
    doc = tiny_doc({"model": {"trunk": {"dropout": 0.3}}})
    assert engine_of({**doc, "replicas": 2}) == "loop"
    _, sink, singles = stacked_and_single(doc, 2)
    for i, one in enumerate(singles):
        assert_same(rows_of(one), rows_of(sink, i))


def perturb_seed(monkeypatch: pytest.MonkeyPatch, seed: int, change) -> None:
    """Make load_suite give the run of `seed` different training data."""
    original = R.load_suite

    def load(cfg, s, *args, **kwargs):
        data = original(cfg, s, *args, **kwargs)
        if s == seed:
            change(data)
        return data

    monkeypatch.setattr(R, "load_suite", load)


@pytest.mark.parametrize("method, params", [("dwa", {}), ("uncertainty", {}), ("pcgrad", {}),
                                            ("mgda", {})])
def test_perturbing_one_replica_leaves_the_others_unchanged(tiny_doc, monkeypatch, method,
                                                            params):
    doc = tiny_doc({"replicas": 3, "weighting": {"method": method, "params": params}})
    before = MemorySink()
    train(parse_config(doc), before)

    def shuffle_targets(data):
        for name, t in data.train.targets.items():
            data.train.targets[name] = t.flip(0)

    perturb_seed(monkeypatch, 1, shuffle_targets)
    after = MemorySink()
    train(parse_config(doc), after)
    for i in (0, 2):  # bitwise: the stacked ops keep replicas apart
        assert rows_of(before, i) == rows_of(after, i)
    changed = rows_of(after, 1)
    assert any(changed[k] != v for k, v in rows_of(before, 1).items() if k in changed)


@pytest.mark.parametrize("method", ["static", "mgda"])
def test_a_diverging_replica_leaves_the_others_training(tiny_doc, monkeypatch, method):
    doc = tiny_doc({"replicas": 3, "weighting": {"method": method}})
    healthy = MemorySink()
    train(parse_config(doc), healthy)

    def poison(data):
        key = next(iter(data.train.inputs))
        data.train.inputs[key] = data.train.inputs[key] * float("nan")

    perturb_seed(monkeypatch, 1, poison)
    sink = MemorySink()
    result = train(parse_config(doc), sink)
    assert result.status == "finished"
    assert "replica 1 (seed 1) diverged" in (result.message or "")
    entries = result.summary["replicas"]
    assert [e["seed"] for e in entries] == [0, 1, 2]
    assert "diverged" in entries[1] and entries[1]["test"] == {}
    assert "diverged" not in entries[0] and entries[0]["test"]
    for i in (0, 2):
        assert rows_of(sink, i) == rows_of(healthy, i)
    assert not any(row_replica(r) == 1 and r[2] == "test" for r in sink.rows)
    # the summary's means are over the replicas that finished
    task = next(iter(entries[0]["test"]))
    mean = (entries[0]["test"][task]["loss"] + entries[2]["test"][task]["loss"]) / 2
    assert result.summary["test"][task]["loss"] == pytest.approx(mean)


def test_every_replica_diverging_ends_the_run(tiny_doc, monkeypatch):
    def poison(data):
        key = next(iter(data.train.inputs))
        data.train.inputs[key] = data.train.inputs[key] * float("nan")

    original = R.load_suite

    def load(cfg, s, *args, **kwargs):
        data = original(cfg, s, *args, **kwargs)
        poison(data)
        return data

    monkeypatch.setattr(R, "load_suite", load)
    result = train(parse_config(tiny_doc({"replicas": 2})), MemorySink())
    assert result.status == "diverged"
    assert "every replica diverged" in (result.message or "")


def test_summary_means_and_per_replica_entries(tiny_doc):
    result, _, singles = stacked_and_single(tiny_doc(), 2)
    entries = result.summary["replicas"]
    assert [e["seed"] for e in entries] == [0, 1]
    for key in ("test", "val", "best_val"):
        for task, metrics in result.summary[key].items():
            for name, value in metrics.items():
                expected = (entries[0][key][task][name] + entries[1][key][task][name]) / 2
                assert value == pytest.approx(expected)
    # each entry is its seed's own run
    for entry, one in zip(entries, singles, strict=True):
        test_rows = {(r[3], r[4]): r[5] for r in one.rows if r[2] == "test"}
        for task, metrics in entry["test"].items():
            for name, value in metrics.items():
                assert value == pytest.approx(test_rows[(task, name)], rel=REL)


def test_snapshots_per_replica(tiny_doc):
    sink = MemorySink()
    train(parse_config(tiny_doc({"replicas": 2, "optim": {"epochs": 1}})), sink)
    kinds = {kind for _, kind, _ in sink.snapshots}
    assert {"probe", "predictions", "grid", "probe/r1", "predictions/r1", "grid/r1"} <= kinds
    final = sink.checkpoints["final"]
    assert [r["seed"] for r in final["replicas"]] == [0, 1]


def test_early_stopping_is_per_replica(tiny_doc):
    doc = tiny_doc({"optim": {"epochs": 6, "eval_every": 2, "lr": 0.05,
                              "early_stopping": {"patience": 1}}})
    result, sink, singles = stacked_and_single(doc, 2)
    for i, one in enumerate(singles):
        single_test = {(r[3], r[4]): r[5] for r in one.rows if r[2] == "test"}
        stacked_test = {(r[3], r[4]): r[5] for r in sink.rows
                        if r[2] == "test" and row_replica(r) == i}
        assert single_test.keys() == stacked_test.keys()
        for key, value in single_test.items():
            assert stacked_test[key] == pytest.approx(value, rel=REL, abs=1e-6)


@pytest.mark.parametrize("value", [0, 33, "three"])
def test_replicas_out_of_range_is_refused_naming_the_field(tiny_doc, value):
    with pytest.raises(ConfigError) as info:
        parse_config(tiny_doc({"replicas": value}))
    assert any(e.path == "replicas" for e in info.value.errors)
    assert "32" in str(info.value) or "integer" in str(info.value) or "1" in str(info.value)


# --- Δm over seeds -------------------------------------------------------------------------


def test_t_interval_on_hand_made_numbers():
    from mtl_core.metrics import mean_sd, t_interval

    values = [1.0, 2.0, 3.0, 4.0, 5.0]
    mean, sd = mean_sd(values)
    assert mean == 3.0 and sd == pytest.approx(math.sqrt(2.5))
    low, high = t_interval(values)  # 3 ± 2.776 · 1.5811 / √5
    assert low == pytest.approx(3 - 2.776 * math.sqrt(2.5) / math.sqrt(5), abs=1e-9)
    assert high == pytest.approx(3 + 2.776 * math.sqrt(2.5) / math.sqrt(5), abs=1e-9)
    with pytest.raises(ValueError, match="at least 2"):
        t_interval([1.0])


def summary(seed_values: list[tuple[int, dict[str, float]]]) -> dict:
    entries = [{"seed": s, "test": {t: {"mse": v} for t, v in vals.items()}}
               for s, vals in seed_values]
    tasks = list(seed_values[0][1])
    mean = {t: {"mse": sum(v[t] for _, v in seed_values) / len(seed_values)} for t in tasks}
    return {"test": mean, "replicas": entries}


def test_delta_m_per_seed_mean_sd_interval_and_verdict():
    from mtl_core.baselines import comparison

    # baselines: mse 1.0 on both tasks for every seed; the multi-task run per seed:
    run = summary([(0, {"a": 0.9, "b": 0.9}),    # Δm −10 %
                   (1, {"a": 1.2, "b": 1.0}),    # Δm +10 %
                   (2, {"a": 0.8, "b": 0.8})])   # Δm −20 %
    base = {t: summary([(s, {t: 1.0}) for s in (0, 1, 2)]) for t in ("a", "b")}
    comp = comparison(run, base, {"a": "regression", "b": "regression"})
    spread = comp.seeds
    assert spread is not None and spread.seeds == [0, 1, 2]
    assert spread.deltas == pytest.approx([-10.0, 10.0, -20.0])
    assert spread.mean == pytest.approx(-20 / 3)
    sd = math.sqrt(sum((d + 20 / 3) ** 2 for d in (-10, 10, -20)) / 2)
    assert spread.sd == pytest.approx(sd)
    low, high = spread.interval
    assert low == pytest.approx(-20 / 3 - 4.303 * sd / math.sqrt(3))
    assert high == pytest.approx(-20 / 3 + 4.303 * sd / math.sqrt(3))
    assert spread.helped == 2 and spread.verdict() == "sharing helped in 2 of 3 seeds"
    assert "95 % interval" in spread.text()


def test_delta_m_spread_needs_the_same_seeds_in_the_baselines():
    from mtl_core.baselines import comparison

    run = summary([(0, {"a": 0.9}), (1, {"a": 1.1})])
    other_seeds = {"a": summary([(5, {"a": 1.0}), (6, {"a": 1.0})])}
    assert comparison(run, other_seeds, {"a": "regression"}).seeds is None
    one_seed = {"test": {"a": {"mse": 0.9}}}
    assert comparison(one_seed, {"a": {"test": {"a": {"mse": 1.0}}}},
                      {"a": "regression"}).seeds is None


# --- the CLI and the store ------------------------------------------------------------------


def test_store_keeps_the_replica_of_each_row(tmp_path):
    from mtl_core.config import ExperimentConfig
    from mtl_core.store import RunStore

    store = RunStore(tmp_path / "runs")
    run_id = store.create_run(ExperimentConfig())
    store.add_metrics(run_id, [(1, 0.1, "train", "a", "loss", 0.5),  # an old 6-element row
                               (1, 0.1, "train", "a", "loss", 0.7, 3)])
    frame = store.metrics(run_id)
    assert frame.replica.tolist() == [0, 3] and frame.value.tolist() == [0.5, 0.7]


def test_replica_indices_survive_a_rebuilt_index(tmp_path):
    """The run folder is the source of truth (mtl_core.store): a lost index is rebuilt from
    metrics.jsonl with every row's replica."""
    from mtl_core import store as store_module
    from mtl_core.config import ExperimentConfig

    runs = tmp_path / "runs"
    store = store_module.RunStore(runs)
    run_id = store.create_run(ExperimentConfig())
    store.add_metrics(run_id, [(1, 0.1, "val", "a", "mse", 0.2, 1),
                               (1, 0.1, "val", "a", "mse", 0.3)])
    assert store.metrics(run_id).replica.tolist() == [1, 0]
    (runs / store_module.DB_NAME).unlink()
    store_module._READY.clear()
    rebuilt = store_module.RunStore(runs)
    assert rebuilt.metrics(run_id).replica.tolist() == [1, 0]
    assert rebuilt.metrics(run_id).value.tolist() == [0.2, 0.3]


def stacked_store(tmp_path):
    from mtl_core.config import ExperimentConfig
    from mtl_core.store import RunStore

    store = RunStore(tmp_path / "runs")
    run_id = store.create_run(ExperimentConfig.model_validate(
        {"name": "seeds", "replicas": 3, "data": {"suite": "toy_2d"}}))
    store.set_status(run_id, "running", pid=1)
    store.add_metrics(run_id, [(8, 1.0, "test", "circle", "accuracy", v, r)
                               for r, v in enumerate((0.7, 0.8, 0.9))])
    entries = [{"seed": s, "test": {"circle": {"accuracy": v}}, "val": {}, "best_val": {}}
               for s, v in zip((4, 5, 6), (0.7, 0.8, 0.9), strict=True)]
    store.set_status(run_id, "finished", step=8, total_steps=8,
                     summary={"test": {"circle": {"accuracy": 0.8}}, "val": {}, "best_val": {},
                              "replicas": entries})
    return store, run_id


def test_show_prints_mean_and_sd_over_the_seeds(tmp_path, capsys):
    import json

    from mtl_core import cli

    store, run_id = stacked_store(tmp_path)
    assert cli.main(["show", run_id, "--runs-dir", str(store.runs_dir)]) == 0
    out = capsys.readouterr().out
    assert "mean ± sd over 3 seeds (4, 5, 6)" in out
    assert "0.8 ± 0.1" in out
    assert cli.main(["show", run_id, "--json", "--runs-dir", str(store.runs_dir)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["summary"]["test"]["circle"]["accuracy"] == 0.8
    assert [e["seed"] for e in shown["summary"]["replicas"]] == [4, 5, 6]
    assert cli.main(["export", run_id, "--format", "csv",
                     "--runs-dir", str(store.runs_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split(",")[-1] == "replica"
    assert [line.split(",")[-1] for line in lines[1:]] == ["0", "1", "2"]


def test_set_replicas_beyond_the_limit_exits_2_naming_the_field(tmp_path, capsys):
    import yaml

    from mtl_core import cli

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"data": {"suite": "toy_2d"}}))
    try:
        code = cli.main(["train", str(config), "--set", "replicas=40",
                         "--runs-dir", str(tmp_path / "runs")])
    except SystemExit as exc:
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert "replicas" in err and "32" in err


def test_batch_norm_replicas_keep_their_own_statistics(tiny_doc):
    # SGD: Adam would turn the ~1e-9 rounding noise of a bias feeding a BatchNorm (its true
    # gradient is 0) into ±lr steps that differ between any two float orderings.
    doc = tiny_doc({"model": {"trunk": {"batch_norm": True}},
                    "optim": {"optimizer": "sgd", "epochs": 2}})
    assert engine_of({**doc, "replicas": 2}) == "stacked"
    _, sink, singles = stacked_and_single(doc, 2)
    for i, one in enumerate(singles):  # val metrics use each replica's running statistics
        assert_same(rows_of(one), rows_of(sink, i))


def test_baselines_train_with_the_same_replicas(tiny_doc):
    from mtl_core.baselines import baseline_configs, baseline_key

    doc = tiny_doc({"replicas": 5, "seed": 2})
    configs = baseline_configs(doc)
    assert configs and all(c.replicas == 5 and c.seed == 2 for c in configs.values())
    one_seed = baseline_configs(tiny_doc({"seed": 2}))
    task = next(iter(configs))
    assert baseline_key(configs[task]) != baseline_key(one_seed[task])  # never mixed up
