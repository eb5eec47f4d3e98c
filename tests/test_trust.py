"""The trust boundary and the limits (issue 10): paths from a browser stay inside the allowed
roots, sizes are checked before anything is allocated, and what is knowable at submit is
refused at submit (CLI: exit 2, message on stderr, nothing queued)."""
from __future__ import annotations

import base64
import json
import os
import time
import zlib
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mtl_core import cli
from mtl_core.config import ConfigError, loads_config_text, parse_config
from mtl_core.store import DB_NAME, RunStore
from ui import share
from ui.diagram import build_diagram

ROOT = Path(__file__).resolve().parent.parent
SECRET = "hunter2-TOPSECRET"
HEADER = "shadowcolumn"


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A readable CSV outside every allowed root (the "/etc/shadow" of these tests)."""
    folder = tmp_path / "outside"
    folder.mkdir()
    path = folder / "shadow"
    path.write_text(f"{HEADER},x\n{SECRET},1\n{SECRET},2\n{SECRET},3\n{SECRET},4\n")
    return path



def _token(document: dict) -> str:
    raw = json.dumps(document).encode()
    return base64.urlsafe_b64encode(zlib.compress(raw, 9)).decode().rstrip("=")


def _csv_doc(path: str, targets: list[str] | None = None) -> dict:
    return {"device": "cpu",
            "data": {"suite": "csv", "params": {"path": path, "targets": targets or ["x"]}},
            "optim": {"epochs": 1}}


def _messages(exc: ConfigError) -> str:
    return "\n".join(str(e) for e in exc.errors)


def _traversal(target: Path) -> str:
    """`target` as a ../../.. path from the working folder."""
    depth = len(Path.cwd().resolve().parts) - 1
    return "../" * (depth + 3) + str(target.resolve()).lstrip("/")


# --- the trust boundary ----------------------------------------------------------------------

@pytest.mark.parametrize("how", ["absolute", "traversal"])
def test_a_link_naming_a_file_outside_the_roots_is_refused_quoting_nothing(secret, how):
    path = str(secret) if how == "absolute" else _traversal(secret)
    with pytest.raises(ConfigError) as caught:
        share.decode_config(_token(_csv_doc(path)))
    text = _messages(caught.value)
    assert "data.params.path" in [e.path for e in caught.value.errors]
    assert "allowed folders" in text and os.environ["MTL_DATA_DIR"] in text
    assert str(ROOT / "examples" / "data") in text
    assert SECRET not in text and HEADER not in text


def test_a_symlink_inside_the_data_dir_pointing_outside_is_refused(secret):
    data = Path(os.environ["MTL_DATA_DIR"])
    data.mkdir(parents=True, exist_ok=True)
    (data / "link.csv").symlink_to(secret)
    for path in ("link.csv", str(data / "link.csv")):
        with pytest.raises(ConfigError) as caught:
            parse_config(_csv_doc(path), trusted=False)
        assert [e.path for e in caught.value.errors] == ["data.params.path"]
        assert SECRET not in _messages(caught.value)


def test_files_inside_the_roots_are_accepted_from_a_browser(tmp_path, secret, monkeypatch):
    data = Path(os.environ["MTL_DATA_DIR"])
    data.mkdir(parents=True, exist_ok=True)
    (data / "t.csv").write_text("a,x\n1,2\n")
    uploads = Path(os.environ["MTL_RUNS_DIR"]) / "uploads"
    uploads.mkdir(parents=True)
    (uploads / "u.csv").write_text("a,x\n1,2\n")
    for path in ("t.csv", str(data / "t.csv"), str(uploads / "u.csv"),
                 str(ROOT / "examples" / "data" / "plants.csv")):
        parse_config(_csv_doc(path), trusted=False)
    monkeypatch.setenv("MTL_DATA_ROOTS", os.pathsep.join([str(tmp_path / "nope"),
                                                          str(secret.parent)]))
    parse_config(_csv_doc(str(secret)), trusted=False)  # an operator's extra root


def test_the_cli_keeps_full_paths_unless_the_operator_restricts_them(secret, tmp_path, capsys,
                                                                     monkeypatch):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(_csv_doc(str(secret), ["x"])))
    assert parse_config(_csv_doc(str(secret)))  # the operator's own files
    monkeypatch.setenv("MTL_RESTRICT_PATHS", "1")
    code = cli.main(["train", str(config), "--detach", "--runs-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "data.params.path" in err and "allowed folders" in err
    assert SECRET not in err and not (tmp_path / "r" / DB_NAME).exists()


def test_csv_messages_are_bounded_and_quote_no_whole_line(tmp_path, capsys):
    wide = tmp_path / "wide.csv"
    header = ",".join(f"column_{i}_{'z' * 50}" for i in range(300))
    wide.write_text(header + "\n" + ",".join("1" for _ in range(300)) + "\n")
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(_csv_doc(str(wide), ["nope"])))
    code = cli.main(["train", str(config), "--detach", "--runs-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "nope" in err and len(err) < 1500


# --- limits before allocation ----------------------------------------------------------------

def test_a_huge_width_link_is_refused_before_anything_is_built(built):
    doc = {"data": {"suite": "toy_2d"}, "model": {"trunk": {"layers": [100_000, 100_000]}}}
    with pytest.raises(ConfigError) as caught:
        share.decode_config(_token(doc))
    error = next(e for e in caught.value.errors if e.path.startswith("model.trunk.layers"))
    assert "4,096" in error.message and "100,000" in error.message  # the limit and the value
    diagram = build_diagram(doc)
    assert diagram.dot is None and built == []  # nothing built, not even for the diagram


def test_the_diagram_counts_parameters_without_real_weights(built):
    doc = {"data": {"suite": "toy_2d"}, "tasks": [{"name": "circle"}],
           "model": {"trunk": {"layers": [4096, 4096]}, "heads": {"layers": []}}}
    diagram = build_diagram(doc)
    assert diagram.dot is not None
    assert diagram.counts == {"shared": 2 * 4096 + 4096 + 4096 * 4096 + 4096,
                              "circle": 4096 + 1}
    assert built and set(built) == {"meta"}


def test_too_many_parameters_are_refused_at_submit_naming_the_limit(tmp_path, capsys, built):
    doc = {"device": "cpu", "data": {"suite": "toy_2d"},
           "model": {"trunk": {"layers": [4096] * 6}}}
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(doc))
    code = cli.main(["train", str(config), "--detach", "--runs-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "model" in err and "parameters" in err and "20,000,000" in err
    assert not (tmp_path / "r" / DB_NAME).exists() and set(built) <= {"meta"}


def test_limits_follow_the_operators_environment(monkeypatch):
    doc = {"data": {"suite": "toy_2d"}, "model": {"trunk": {"layers": [300]}}}
    parse_config(doc)
    monkeypatch.setenv("MTL_MAX_WIDTH", "256")
    with pytest.raises(ConfigError) as caught:
        parse_config(doc)
    assert "model.trunk.layers.0" in _messages(caught.value) and "256" in _messages(caught.value)
    monkeypatch.setenv("MTL_MAX_WIDTH", "lots")
    with pytest.raises(ValueError, match="MTL_MAX_WIDTH"):
        parse_config(doc)


def test_epochs_of_a_billion_are_refused_naming_steps_and_the_limit():
    with pytest.raises(ConfigError) as caught:
        parse_config({"data": {"suite": "toy_2d"}, "optim": {"epochs": 1_000_000_000}})
    error = next(e for e in caught.value.errors if e.path == "optim.epochs")
    assert "steps" in error.message and "1,000,000" in error.message


def test_too_many_tasks_and_input_columns_are_refused():
    targets = [f"t{i}" for i in range(40)]
    inputs = [f"i{i}" for i in range(5000)]
    with pytest.raises(ConfigError) as caught:
        parse_config({"data": {"suite": "csv", "params": {"path": "x.csv", "targets": targets,
                                                          "inputs": inputs}}})
    paths = {e.path for e in caught.value.errors}
    assert {"tasks", "data.params.inputs"} <= paths


def _bomb(levels: int) -> str:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels + 1):
        refs = ",".join([f"*a{i - 1}"] * 9)
        lines.append(f"a{i}: &a{i} [{refs}]")
    lines.append(f"name: *a{levels}")  # a field whose error message would echo its value
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("levels", [7, 8])
def test_alias_bombs_are_refused_quickly_with_a_short_message(levels, tmp_path, capsys):
    text = _bomb(levels)
    assert len(text) < 500
    start = time.perf_counter()
    with pytest.raises(ConfigError) as caught:
        loads_config_text(text, "bomb.yaml")
    assert time.perf_counter() - start < 2.0
    assert "alias" in _messages(caught.value) and len(str(caught.value)) < 500
    config = tmp_path / "bomb.yaml"
    config.write_text(text)
    code = cli.main(["train", str(config), "--runs-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and len(err) < 500 and not (tmp_path / "r").exists()


def test_deep_nesting_is_refused_quickly_in_a_link_and_in_yaml():
    raw = b'{"data": ' + b"[" * 200_000
    token = base64.urlsafe_b64encode(zlib.compress(raw, 9)).decode().rstrip("=")
    assert len(token) < 2000
    start = time.perf_counter()
    with pytest.raises(ConfigError) as caught:
        share.decode_config(token)
    assert "deep" in _messages(caught.value) and len(str(caught.value)) < 500
    with pytest.raises(ConfigError) as caught:
        loads_config_text("[" * 200_000, "deep.yaml")
    assert "deep" in _messages(caught.value) and len(str(caught.value)) < 500
    with pytest.raises(ConfigError):
        loads_config_text("a: " + "[" * 60 + "]" * 60, "deep.yaml")
    assert time.perf_counter() - start < 3.0


def test_an_oversized_config_text_is_refused_naming_the_limit():
    with pytest.raises(ConfigError) as caught:
        loads_config_text("name: " + "x" * 600_000, "big.yaml")
    assert "262,144" in _messages(caught.value)


@pytest.mark.parametrize("text", ["seed: " + "9" * 5000, "name: 2001-13-45"])
def test_values_yaml_cannot_build_are_a_config_error_not_a_traceback(text):
    with pytest.raises(ConfigError) as caught:
        loads_config_text(text, "odd.yaml")
    assert "odd.yaml is not valid YAML" in str(caught.value) and len(str(caught.value)) < 500


def test_echoed_values_are_truncated():
    with pytest.raises(ConfigError) as caught:
        parse_config({"optim": {"lr": "x" * 100_000}})
    assert len(str(caught.value)) < 400


# --- refuse at submit what is knowable at submit ---------------------------------------------

@pytest.mark.parametrize("yaml_text, path", [
    ("optim: {lr: .inf}", "optim.lr"),
    ("optim: {lr: .nan}", "optim.lr"),
    ("tasks: [{name: circle, weight: .inf}]", "tasks.0.weight"),
    ("weighting: {method: gradnorm, params: {alpha: .nan}}", "weighting.params.alpha"),
    ("seed: 123456789012345678901234567", "seed"),
    ("seed: -1", "seed"),
])
def test_non_finite_numbers_and_huge_seeds_exit_2_at_submit(yaml_text, path, tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("device: cpu\ndata: {suite: toy_2d}\n" + yaml_text + "\n")
    code = cli.main(["train", str(config), "--detach", "--runs-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and f"{path}:" in err and "Traceback" not in err
    assert not (tmp_path / "r" / DB_NAME).exists()


def test_json_infinity_is_refused_in_a_link():
    token = share._pack({"data": {"suite": "toy_2d"}, "optim": {"lr": float("inf")}})
    with pytest.raises(ConfigError) as caught:
        share.decode_config(token)
    assert "optim.lr" in [e.path for e in caught.value.errors]


@pytest.mark.parametrize("content, words", [
    (b"name: caf\xe9\nseed: 1\n", "UTF-8"),
    (b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00>\x00", "binary"),
])
def test_a_non_utf8_or_binary_config_exits_2_without_a_traceback(content, words, tmp_path,
                                                                 capsys):
    config = tmp_path / "c.yaml"
    config.write_bytes(content)
    code = cli.main(["train", str(config), "--runs-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and words in err and "Traceback" not in err and len(err) < 500
    assert not (tmp_path / "r").exists()


CSV_CASES = {
    "missing target": ("a,b\n" + "".join(f"{i},{i % 2}\n" for i in range(20)), ["y"],
                       "not in the file"),
    "all-NaN column": ("a,y\n" + "".join(f",{i % 2}\n" for i in range(20)), ["y"],
                       "missing"),
    "constant target": ("a,y\n" + "".join(f"{i},1\n" for i in range(20)), ["y"],
                        "single value"),
    "one row": ("a,y\n1,0\n", ["y"], "rows"),
    "non-numeric input": ("a,y\n" + "".join(f"w{i},{i % 2}\n" for i in range(20)), ["y"],
                          "not numeric"),
    "binary content": ("\x00\x01\x02\xff\xfe" * 40, ["y"], "csv"),
}


@pytest.mark.parametrize("case", list(CSV_CASES))
def test_csv_problems_exit_2_at_submit_and_nothing_is_queued(case, tmp_path, capsys):
    content, targets, words = CSV_CASES[case]
    table = tmp_path / "t.csv"
    table.write_bytes(content.encode("latin-1"))
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(_csv_doc(str(table), targets)))
    code = cli.main(["train", str(config), "--detach", "--runs-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "data" in err and words in err and "Traceback" not in err
    runs = tmp_path / "r"
    assert not (runs / DB_NAME).exists() or not RunStore(runs).list_runs()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:3"])
def test_cuda_without_cuda_exits_2_at_submit(device, tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(f"device: {device}\ndata: {{suite: toy_2d}}\n")
    code = cli.main(["train", str(config), "--detach", "--runs-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "device:" in err and "cpu" in err
    assert not (tmp_path / "r" / DB_NAME).exists()


# --- property: nothing past the limits, every refusal names its field ----------------------

_WIDTH = st.one_of(st.integers(1, 64), st.integers(-2, 10**7))
_FLOAT = st.one_of(st.floats(1e-5, 1.0), st.floats(allow_nan=True, allow_infinity=True))


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(layers=st.lists(_WIDTH, max_size=24), heads=st.lists(_WIDTH, max_size=20),
       epochs=st.one_of(st.integers(1, 5), st.integers(-1, 10**12)),
       batch=st.integers(1, 512), lr=_FLOAT, weight=_FLOAT,
       seed=st.one_of(st.integers(0, 10), st.integers(-10**30, 10**30)))
def test_random_configs_never_pass_the_limits_and_refusals_name_fields(
        built, layers, heads, epochs, batch, lr, weight, seed):
    from mtl_core import limits
    from mtl_core.preflight import check_submit

    doc = {"seed": seed, "device": "cpu", "data": {"suite": "synthetic_mmoe"},
           "tasks": [{"name": "task1", "weight": weight}],
           "model": {"trunk": {"layers": layers}, "heads": {"layers": heads}},
           "optim": {"epochs": epochs, "batch_size": batch, "lr": lr}}
    top = {"seed", "device", "data", "tasks", "model", "optim", "weighting", "log_every", "name"}
    try:
        cfg = parse_config(doc)
        check_submit(cfg)
    except ConfigError as exc:
        assert set(built) <= {"meta"}  # no weights, whatever was refused
        assert exc.errors
        for error in exc.errors:
            assert error.path.split(".")[0] in top, error
            assert len(error.message) < 400
        return
    lim = limits.current()
    assert all(1 <= w <= lim.max_width for w in layers + heads)
    assert len(layers) <= lim.max_layers and len(heads) <= lim.max_layers
    assert 0 <= seed <= 2**32 - 1
    for value in (lr, weight):
        assert value == value and abs(value) != float("inf")
    counts = limits.count_parameters(cfg)
    assert sum(counts.values()) <= lim.max_params
    assert set(built) <= {"meta"}
    assert limits.total_steps(cfg) <= lim.max_steps


def test_the_worker_checks_the_limits_again_before_any_weight_exists(tiny_doc, monkeypatch,
                                                                    built):
    from mtl_core.sink import MemorySink
    from mtl_core.trainer import train

    cfg = parse_config(tiny_doc())
    monkeypatch.setenv("MTL_MAX_PARAMS", "100")  # e.g. lowered after the run was queued
    with pytest.raises(ValueError, match="MTL_MAX_PARAMS"):
        train(cfg, MemorySink())
    assert set(built) == {"meta"}


def test_the_diagram_of_a_generated_suite_generates_no_data(monkeypatch):
    import mtl_core.data

    def refuse(*args, **kwargs):
        raise AssertionError("the diagram generated the data set")

    monkeypatch.setattr(mtl_core.data, "load_suite", refuse)
    doc = {"data": {"suite": "synthetic_mmoe",
                    "params": {"n_samples": 200_000, "n_test": 100_000, "n_features": 1024}}}
    diagram = build_diagram(doc)
    assert diagram.dot is not None and diagram.counts["shared"] == 1024 * 64 + 64 + 64 * 64 + 64


def test_a_backbone_weights_path_outside_the_roots_is_refused_without_looking_at_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A link must not tell whether a server file exists ("no weights file at …")."""
    from mtl_core.models import backbones

    looked: list[str] = []
    monkeypatch.setattr(backbones, "weights_problem",
                        lambda name, weights: looked.append(weights) or None)
    outside = tmp_path / "elsewhere" / "secret.pt"
    doc = {"data": {"suite": "digit_boxes"},
           "model": {"trunk": {"type": "resnet18", "weights": str(outside)}}}
    with pytest.raises(ConfigError) as refused:
        parse_config(doc, trusted=False)
    (error,) = [e for e in refused.value.errors if e.path == "model.trunk.weights"]
    assert "allowed folders" in error.message and looked == []
    parse_config(doc)  # the CLI's own user: the file check runs
    assert looked == [str(outside)]


def test_the_parameter_limit_counts_every_stacked_replica(monkeypatch: pytest.MonkeyPatch):
    from mtl_core import limits

    counts = {"trunk": 600, "heads": 400}
    monkeypatch.setenv("MTL_MAX_PARAMS", "4000")
    assert limits.params_problems(counts, replicas=4) == []
    ((path, message),) = limits.params_problems(counts, replicas=5)
    assert path == "model" and "5 stacked replicas" in message and "5,000" in message


def test_replica_seeds_must_stay_within_the_seed_range():
    with pytest.raises(ConfigError) as refused:
        parse_config({"seed": 2**32 - 2, "replicas": 3})
    assert [e.path for e in refused.value.errors] == ["replicas"]
    assert parse_config({"seed": 2**32 - 3, "replicas": 3}).replicas == 3
