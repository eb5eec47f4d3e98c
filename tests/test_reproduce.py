"""Paper checks: each check's measurement on a shortened setting, the CLI and the page."""
from __future__ import annotations

import json

import pytest
from streamlit.testing.v1 import AppTest

from mtl_core import cli, reproduce
from mtl_core.reproduce import CHECKS, CheckUnavailable


def run_cli(capsys, *argv):
    try:
        code = cli.main(list(argv))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_every_check_names_its_published_figure_and_source():
    assert {"kendall2018_toy", "mmoe2018_synthetic", "sener2018_multimnist",
            "chen2018_gradnorm_toy", "liu2021_cagrad_toy"} <= set(CHECKS)
    for check in CHECKS.values():
        assert check.published and check.source and check.claim
        assert any(ch.isdigit() for ch in check.source)  # a year, a table or a figure


def test_kendall_short_learns_a_larger_noise_for_the_noisier_task():
    m = CHECKS["kendall2018_toy"].run("short")
    # noise-variance ratio 6.06; a short run is already well on its way there
    assert m.values["true_ratio"] == pytest.approx(6.06, abs=0.01)
    assert 2.0 < m.values["learned_ratio"] < 12.0
    assert m.verdict in (reproduce.HOLDS, reproduce.FAILS)


def test_gradnorm_short_brings_the_weighted_gradient_norms_together():
    m = CHECKS["chen2018_gradnorm_toy"].run("short")
    assert m.values["ratio_static"] > 5
    assert m.values["ratio_gradnorm"] < m.values["ratio_static"] / 3


def test_mmoe_short_measures_the_gap_per_correlation_and_seed():
    m = CHECKS["mmoe2018_synthetic"].run("short")
    assert [(r["correlation"], r["seed"]) for r in m.rows] == [(1.0, 0), (0.0, 0)]
    for r in m.rows:
        assert r["gap"] == pytest.approx(r["shared-bottom MSE"] - r["MMoE MSE"])
        assert 0 < r["MMoE MSE"] < 2 and 0 < r["shared-bottom MSE"] < 2  # standardised targets
    assert set(m.values) == {"gap_1", "gap_0"}


def test_cagrad_short_mgda_reaches_the_pareto_set():
    m = CHECKS["liu2021_cagrad_toy"].run("short")
    assert m.values == {"reached": 1, "paths": 1}
    assert m.verdict == reproduce.HOLDS


def test_sener_without_mnist_says_what_to_put_where(isolated_dirs, tmp_path):
    with pytest.raises(CheckUnavailable, match=r"MNIST.*train-images-idx3-ubyte.*MNIST/raw"):
        CHECKS["sener2018_multimnist"].run("short")


def test_sener_short_on_tiny_idx_files(isolated_dirs, tmp_path, monkeypatch):
    from idx_files import write_fake_mnist

    write_fake_mnist(tmp_path / "data", n_train=200, n_test=100)
    m = CHECKS["sener2018_multimnist"].run("short")
    assert 0 <= m.values["left"] <= 100 and 0 <= m.values["right"] <= 100
    assert [r["published %"] for r in m.rows] == [96.46, 94.99]
    assert m.expected  # a scaled run states what it is expected to reach


def test_cli_lists_refuses_and_saves_the_result(isolated_dirs, capsys):
    code, out, _ = run_cli(capsys, "reproduce", "--list")
    assert code == 0 and all(name in out for name in CHECKS)
    code, _, err = run_cli(capsys, "reproduce", "nope")
    assert code == 2 and "nope" in err and "kendall2018_toy" in err
    code, _, err = run_cli(capsys, "reproduce", "sener2018_multimnist", "--short")
    assert code == 2 and "MNIST" in err
    code, out, _ = run_cli(capsys, "reproduce", "liu2021_cagrad_toy", "--short")
    assert code == 0
    for field in ("published:", "source:", "measured:", "verdict:   HOLDS"):
        assert field in out
    saved = json.loads((isolated_dirs / "paper_checks" / "liu2021_cagrad_toy.json").read_text())
    assert saved["verdict"] == "holds" and saved["size"] == "short"


def test_page_shows_published_measured_verdict_and_source(isolated_dirs, monkeypatch):
    m = reproduce.Measurement(measured="learned σ² = 0.1 / 0.5", verdict=reproduce.FAILS,
                              setting="a test setting", rows=[{"task": "y1", "x": 1.0}],
                              seconds=1.0)
    reproduce.save_result(isolated_dirs, "kendall2018_toy", "default", m)
    started = []
    monkeypatch.setattr(reproduce, "start_background",
                        lambda runs_dir, name, size="default": started.append(name) or 0)
    at = AppTest.from_file("../pages/papers.py", default_timeout=60)
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    text = " ".join(md.value for md in at.markdown)
    for check in CHECKS.values():
        assert check.published in text and check.source in text
    warnings = " ".join(w.value for w in at.warning)
    assert "learned σ² = 0.1 / 0.5" in warnings and "does not hold" in warnings
    at.button(key="paper_run_mmoe2018_synthetic").click().run()
    assert started == ["mmoe2018_synthetic"]

