"""Paper checks: a published figure next to the one measured here, with a verdict and the
source of the published figure.

Each check trains through the normal engine (`mtl_core.config.parse_config` +
`mtl_core.trainer.train`, in this process, with an in-memory sink) or, for the 2-D toy, through
`mtl_core.geometry`, which drives the trainer's method objects. Three sizes:
- `short`: seconds; what the tests run (the verdict of a short run means little);
- `default`: minutes on a laptop CPU, scaled down where the paper's budget is large, with the
  figure this scaled setting is expected to reach (measured here) stated next to the paper's;
- `full`: the published setting where it differs (for a GPU).

`python -m mtl_core reproduce --list`, `python -m mtl_core reproduce NAME [--full]`, and the
Paper checks page all call `CHECKS[name].run(size)`.
"""
from __future__ import annotations

import math
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

Size = Literal["short", "default", "full"]
HOLDS, FAILS = "holds", "does not hold"


class CheckUnavailable(Exception):
    """A check cannot run here (e.g. its data set is not on disk); the message says why."""


@dataclass
class Measurement:
    measured: str  # the figure measured here, in words and numbers
    verdict: str  # HOLDS or FAILS
    setting: str  # what was run
    rows: list[dict[str, Any]] = field(default_factory=list)  # per seed / per setting
    expected: str = ""  # for a scaled run: the figure this setting is expected to reach
    seconds: float = 0.0
    values: dict[str, float] = field(default_factory=dict)  # the measured numbers (tests)


@dataclass(frozen=True)
class PaperCheck:
    name: str
    title: str
    claim: str
    published: str  # the published figure
    source: str  # paper, table / figure
    measure: Callable[[Size], Measurement]

    def run(self, size: Size = "default") -> Measurement:
        t0 = time.perf_counter()
        result = self.measure(size)
        result.seconds = time.perf_counter() - t0
        return result


# ------------------------------------------------------------------------------ the engine


def _train(document: dict[str, Any]):
    """Validate and train one config in this process; returns (summary, MemorySink)."""
    from mtl_core.config import parse_config
    from mtl_core.sink import MemorySink
    from mtl_core.trainer import train

    cfg = parse_config(document)
    sink = MemorySink()
    result = train(cfg, sink)
    if result.status != "finished":
        raise RuntimeError(f"{cfg.name}: the run ended {result.status}: {result.message}")
    return result.summary, sink


def _last(sink, split: str, task: str, name: str, tail: float = 0.2) -> float:
    """Mean of the last `tail` share of a logged series (one value is noisy: a batch)."""
    values = [v for _, v in sink.series(split, task, name)]
    if not values:
        return math.nan
    return statistics.mean(values[-max(1, int(len(values) * tail)):])


def _verdict(ok: bool) -> str:
    return HOLDS if ok else FAILS


def _write_csv(path: Path, columns: dict[str, np.ndarray]) -> None:
    import pandas as pd

    pd.DataFrame(columns).to_csv(path, index=False)


# ------------------------------------------------------------------------ kendall2018_toy

KENDALL_NOISE = (0.3, 1.0)  # noise std of each task; both signals have variance 1


def _kendall(size: Size) -> Measurement:
    epochs = {"short": 8, "default": 30, "full": 30}[size]
    n = 1000 if size == "short" else 3000
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 8))
    cols = {f"x{i}": x[:, i] for i in range(8)}
    for t, sigma in enumerate(KENDALL_NOISE):
        b = rng.standard_normal(8)
        b /= np.linalg.norm(b)  # x·b has variance 1
        cols[f"y{t + 1}"] = x @ b + sigma * rng.standard_normal(n)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kendall_toy.csv"
        _write_csv(path, cols)
        _, sink = _train({
            "name": "kendall2018-toy", "seed": 0, "device": "cpu",
            "data": {"suite": "csv", "params": {"path": str(path), "targets": ["y1", "y2"]}},
            "model": {"architecture": "hard_sharing", "trunk": {"type": "mlp", "layers": [32]},
                      "heads": {"layers": [16]}},
            "weighting": {"method": "uncertainty"},
            "optim": {"lr": 0.02, "batch_size": 64, "epochs": epochs}, "log_every": 10})
    # Targets are standardised on the training pool, so the noise variance in those units is
    # σ²/(1 + σ²). Uncertainty weighting's effective weight is ½·exp(−s): σ̂² = ½ / weight.
    true = [s * s / (1 + s * s) for s in KENDALL_NOISE]
    learned = [0.5 / _last(sink, "train", f"y{t + 1}", "weight") for t in range(2)]
    true_ratio, learned_ratio = true[1] / true[0], learned[1] / learned[0]
    ok = 1 / 1.5 <= learned_ratio / true_ratio <= 1.5
    return Measurement(
        measured=(f"learned σ² = {learned[0]:.3f} / {learned[1]:.3f} (noise variance "
                  f"{true[0]:.3f} / {true[1]:.3f}); ratio {learned_ratio:.2f} vs {true_ratio:.2f}"),
        verdict=_verdict(ok),
        setting=(f"2 linear regression tasks with noise std {KENDALL_NOISE}, {n} rows, hard "
                 f"sharing MLP, uncertainty weighting, {epochs} epochs; holds when the learned "
                 "ratio σ̂₂²/σ̂₁² is within ×/÷ 1.5 of the noise-variance ratio"),
        rows=[{"task": f"y{t + 1}", "noise variance": true[t], "learned σ²": learned[t]}
              for t in range(2)],
        values={"learned_ratio": learned_ratio, "true_ratio": true_ratio})


# --------------------------------------------------------------------- mmoe2018_synthetic


def _mmoe(size: Size) -> Measurement:
    corrs = {"short": (1.0, 0.0), "default": (1.0, 0.5, 0.0), "full": (1.0, 0.9, 0.5, 0.0)}[size]
    seeds = {"short": (0,), "default": (0, 1, 2), "full": tuple(range(10))}[size]
    epochs = {"short": 2, "default": 10, "full": 20}[size]
    n = 1000 if size == "short" else 4000
    rows = []
    for corr in corrs:
        for seed in seeds:
            mse = {}
            for arch, params in (("hard_sharing", {}), ("mmoe", {"n_experts": 4})):
                summary, _ = _train({
                    "name": f"mmoe2018-{arch}-{corr}", "seed": seed, "device": "cpu",
                    "data": {"suite": "synthetic_mmoe",
                             "params": {"correlation": corr, "n_samples": n}},
                    "model": {"architecture": arch, "params": params,
                              "trunk": {"type": "mlp", "layers": [32]},
                              "heads": {"layers": [16]}},
                    "optim": {"lr": 0.003, "batch_size": 128, "epochs": epochs},
                    "log_every": 50})
                mse[arch] = statistics.mean(m["mse"] for m in summary["test"].values())
            rows.append({"correlation": corr, "seed": seed, "shared-bottom MSE":
                         mse["hard_sharing"], "MMoE MSE": mse["mmoe"],
                         "gap": mse["hard_sharing"] - mse["mmoe"]})
    gap = {c: statistics.mean(r["gap"] for r in rows if r["correlation"] == c) for c in corrs}
    hi, lo = max(corrs), min(corrs)
    per_seed = [next(r["gap"] for r in rows if r["correlation"] == lo and r["seed"] == s)
                > next(r["gap"] for r in rows if r["correlation"] == hi and r["seed"] == s)
                for s in seeds]
    ok = gap[lo] > gap[hi] and sum(per_seed) * 2 > len(seeds)
    return Measurement(
        measured=("mean test-MSE gap (shared-bottom − MMoE) by correlation: "
                  + ", ".join(f"{c:g}: {gap[c]:+.4f}" for c in corrs)
                  + f"; larger at {lo:g} than at {hi:g} in {sum(per_seed)} of {len(seeds)} seeds"),
        verdict=_verdict(ok),
        setting=(f"synthetic_mmoe, {n} samples, correlations {corrs}, seeds {seeds}, "
                 f"{epochs} epochs, MLP 32 (MMoE: 4 such experts); holds when the gap grows "
                 "as correlation falls, on average and in most seeds"),
        rows=rows, values={f"gap_{c:g}": g for c, g in gap.items()})


# ---------------------------------------------------------------------- sener2018_multimnist

SENER_PUBLISHED = (96.46, 94.99)  # uniform scaling, left / right digit accuracy (%)
# examples/multi_mnist.yaml (5k training images, 2 epochs, seed 0), measured here on CPU:
# 70.30 / 73.70 (issue 13 measured 70.4 / 73.6 on another run of the same setting).
SENER_EXPECTED_SCALED = (70.3, 73.7)
SENER_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
               "t10k-labels-idx1-ubyte")


def mnist_missing() -> str | None:
    """Why MNIST cannot be read here, or None when its four raw files are in place."""
    from mtl_core.data import data_dir

    raw = data_dir() / "MNIST" / "raw"
    missing = [f for f in SENER_FILES
               if not (raw / f).exists() and not (raw / f"{f}.gz").exists()]
    if missing:
        return (f"sener2018_multimnist needs MNIST: put {', '.join(missing)} in {raw} "
                "(set MTL_DATA_DIR to the folder holding MNIST/raw/)")
    return None


def _sener(size: Size) -> Measurement:
    why = mnist_missing()
    if why:
        raise CheckUnavailable(why)
    from mtl_core.config import load_config

    doc = load_config(Path(__file__).resolve().parent.parent / "examples" / "multi_mnist.yaml"
                      ).to_dict()
    doc["device"] = "auto"
    doc["data"]["params"]["download"] = False
    if size == "short":
        doc["data"]["params"].update(n_train=200, n_test=100)
        doc["optim"]["epochs"] = 1
    elif size == "full":  # the published budget: every image, 100 epochs
        doc["data"]["params"].update(n_train=0, n_test=0)
        doc["optim"].update(epochs=100, batch_size=256, lr=0.001)
    summary, _ = _train(doc)
    acc = tuple(100 * summary["test"][t]["accuracy"] for t in ("left", "right"))
    if size == "full":
        ok = all(abs(a - p) <= 1.5 for a, p in zip(acc, SENER_PUBLISHED, strict=True))
        rule = "within 1.5 points of the published figure on both digits"
        expected = ""
    else:
        ok = all(abs(a - e) <= 5.0 for a, e in zip(acc, SENER_EXPECTED_SCALED, strict=True))
        rule = ("within 5 points of what this scaled setting is expected to reach; the gap to "
                "the paper is the budget (with all 60k images and 3 epochs MTL Lab reached "
                "95.73 / 92.52, issue 13), use --full on a GPU for the published setting")
        expected = (f"{SENER_EXPECTED_SCALED[0]:.1f} / {SENER_EXPECTED_SCALED[1]:.1f} % "
                    "(this scaled setting, measured here)")
    p = doc["data"]["params"]
    return Measurement(
        measured=f"left / right accuracy {acc[0]:.2f} / {acc[1]:.2f} %",
        verdict=_verdict(ok),
        setting=(f"multi_mnist, n_train {p['n_train'] or 60000}, {doc['optim']['epochs']} "
                 f"epochs, equal weights (static), CNN {doc['model']['trunk']['layers']}; "
                 f"holds when {rule}"),
        rows=[{"digit": t, "published %": SENER_PUBLISHED[i], "measured %": acc[i]}
              for i, t in enumerate(("left", "right"))],
        expected=expected, values={"left": acc[0], "right": acc[1]})


# -------------------------------------------------------------------- chen2018_gradnorm_toy

GRADNORM_SIGMA = (1.0, 10.0)  # output scales; the loss scales as σ²


def _gradnorm(size: Size) -> Measurement:
    epochs = {"short": 6, "default": 20, "full": 20}[size]
    n = 1000 if size == "short" else 3000
    rng = np.random.default_rng(0)
    dim = 10
    x = rng.standard_normal((n, dim))
    b = rng.normal(0, math.sqrt(10), dim) / math.sqrt(dim)  # the paper's B ~ N(0, 10)
    cols = {f"x{i}": x[:, i] for i in range(dim)}
    for t in range(2):
        e = rng.normal(0, math.sqrt(3.5), dim) / math.sqrt(dim)  # ε_i ~ N(0, 3.5)
        cols[f"y{t + 1}"] = np.tanh(x @ (b + e))
    ratios = {}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "gradnorm_toy.csv"
        _write_csv(path, cols)
        for method, params in (("static", {}), ("gradnorm", {"alpha": 0.12})):
            _, sink = _train({
                "name": f"chen2018-{method}", "seed": 0, "device": "cpu",
                "data": {"suite": "csv", "params": {"path": str(path),
                                                    "targets": ["y1", "y2"]}},
                # Targets are standardised, so the scale σ enters as the loss weight σ².
                "tasks": [{"name": f"y{t + 1}", "weight": GRADNORM_SIGMA[t] ** 2}
                          for t in range(2)],
                "model": {"architecture": "hard_sharing",
                          "trunk": {"type": "mlp", "layers": [64, 64, 64]},
                          "heads": {"layers": []}},
                "weighting": {"method": method, "params": params},
                "optim": {"lr": 0.001, "batch_size": 64, "epochs": epochs}, "log_every": 10})
            w = [_last(sink, "train", f"y{t + 1}", "weight") for t in range(2)]
            g = [_last(sink, "diag", f"y{t + 1}", "grad_norm") for t in range(2)]
            # The gradient each task sends into the shared layers: weight × raw gradient.
            ratios[method] = (w[1] * g[1]) / (w[0] * g[0])
            rows.append({"method": method, "weight y1": w[0], "weight y2": w[1],
                         "weighted grad-norm ratio y2/y1": ratios[method]})
    ok = ratios["static"] > 10 and 1 / 3 <= ratios["gradnorm"] <= 3
    return Measurement(
        measured=(f"weighted gradient-norm ratio (σ={GRADNORM_SIGMA[1]:g} task / "
                  f"σ={GRADNORM_SIGMA[0]:g} task): static {ratios['static']:.1f}, GradNorm "
                  f"{ratios['gradnorm']:.2f}"),
        verdict=_verdict(ok),
        setting=(f"2 regression tasks σ_i·tanh((B + ε_i)·x), σ = {GRADNORM_SIGMA} (scaled down "
                 f"from the paper's 1 and 100, so GradNorm's weights stay off their floor), "
                 f"x ∈ R^{dim}, B ~ N(0, 10) and ε_i ~ N(0, 3.5) entries divided by √{dim}, "
                 f"{n} rows, 3×64 shared MLP, {epochs} epochs, α = 0.12; holds "
                 "when static's ratio is above 10 and GradNorm's within ×/÷ 3 of 1"),
        rows=rows, values={f"ratio_{k}": v for k, v in ratios.items()})


# ---------------------------------------------------------------------- liu2021_cagrad_toy

CAGRAD_STARTS = ((-8.5, 7.5), (-8.5, -5.0), (9.0, 9.0))  # Liu et al. 2021, toy.py


def _cagrad(size: Size) -> Measurement:
    from mtl_core import geometry as geo

    problem = geo.get_problem("cagrad_toy")
    methods = ("mgda",) if size == "short" else ("mgda", "cagrad")
    starts = CAGRAD_STARTS[:1] if size == "short" else CAGRAD_STARTS
    steps = {"short": 800, "default": 2000, "full": 5000}[size]
    settings = geo.PathSettings(steps=steps, lr=0.1)
    pareto = geo.pareto_set(problem)
    rows = []
    for method in methods:
        for start in starts:
            path = geo.run_path(problem, method, start, settings)
            distance = float(np.min(np.linalg.norm(pareto - path.end, axis=1)))
            stationarity = geo.pareto_stationarity(problem, path.end)
            rows.append({"method": method, "start": str(start), "end x1": path.end[0],
                         "end x2": path.end[1], "distance to Pareto set": distance,
                         "Pareto-stationarity": stationarity,
                         "reached": distance < 0.35 and stationarity < 0.01})
    reached = sum(r["reached"] for r in rows)
    return Measurement(
        measured=f"{reached} of {len(rows)} paths end on the Pareto set",
        verdict=_verdict(reached == len(rows)),
        setting=(f"CAGrad toy, starts {list(starts)}, {', '.join(methods)} (the trainer's "
                 f"method objects), Adam lr 0.1 for {steps} steps (the paper: lr 0.001, "
                 "100k steps); a path reaches the set when it ends within 0.35 of a "
                 "non-dominated grid point and its Pareto-stationarity is below 0.01"),
        rows=rows, values={"reached": reached, "paths": len(rows)})


# ------------------------------------------------------------------------------ the list

CHECKS: dict[str, PaperCheck] = {c.name: c for c in [
    PaperCheck(
        "kendall2018_toy", "Uncertainty weighting learns each task's noise level",
        "Minimising ½σ⁻²·L + log σ per task drives σ² to the task's loss, which for a "
        "well-fit regression task is its noise variance.",
        "σ_t² at the optimum equals the task's mean squared residual (the noise variance), so "
        "the learned σ₂²/σ₁² equals the noise-variance ratio",
        "Kendall, Gal & Cipolla, CVPR 2018, Sec. 3.2, Eqs. 5–7", _kendall),
    PaperCheck(
        "mmoe2018_synthetic", "Shared-bottom loses more than MMoE as correlation falls",
        "On the synthetic two-task data of Ma et al., lowering the tasks' correlation hurts "
        "the shared-bottom model more than MMoE.",
        "at correlation 1.0 the models are close; as the correlation falls to 0.5 the "
        "shared-bottom loss rises clearly above MMoE's (a qualitative figure: the paper "
        "plots loss curves, no single number)",
        "Ma et al., KDD 2018, Sec. 4 (synthetic data), Fig. 4", _mmoe),
    PaperCheck(
        "sener2018_multimnist", "MultiMNIST left / right digit accuracy (equal weights)",
        "A LeNet-style shared encoder with two heads reaches about 96 / 95 % on MultiMNIST "
        "with equal loss weights.",
        f"{SENER_PUBLISHED[0]} / {SENER_PUBLISHED[1]} % (uniform scaling, 100 epochs)",
        "Sener & Koltun, NeurIPS 2018, the MultiMNIST results table (uniform scaling)",
        _sener),
    PaperCheck(
        "chen2018_gradnorm_toy", "GradNorm balances the gradients of tasks on different scales",
        "With equal weights the large-scale task's gradient dominates the shared layers; "
        "GradNorm learns weights that bring the tasks' gradient norms together.",
        "equal weights: the σ = 100 task dominates; GradNorm's weights balance the gradient "
        "norms and both tasks train at similar rates",
        "Chen et al., ICML 2018, Sec. 4 (toy example), Fig. 2", _gradnorm),
    PaperCheck(
        "liu2021_cagrad_toy", "MGDA and CAGrad reach the Pareto set on the CAGrad toy",
        "From the three published starts, MGDA and CAGrad converge to the Pareto set of the "
        "two-task toy (CAGrad near its middle).",
        "every MGDA and CAGrad path from (−8.5, 7.5), (−8.5, −5), (9, 9) ends on the Pareto "
        "set x₁ ∈ [−7, 7], x₂ ≈ −8.36",
        "Liu et al., NeurIPS 2021, Fig. 1 and toy.py", _cagrad),
]}


def get_check(name: str) -> PaperCheck:
    try:
        return CHECKS[name]
    except KeyError:
        raise ValueError(f"unknown check {name!r}; allowed: {', '.join(CHECKS)}") from None


def report(check: PaperCheck, m: Measurement) -> str:
    """The plain-text report the CLI prints (the page shows the same fields)."""
    lines = [f"{check.name}: {check.title}",
             f"  claim:     {check.claim}",
             f"  published: {check.published}",
             f"  source:    {check.source}"]
    if m.expected:
        lines.append(f"  expected:  {m.expected}")
    lines += [f"  measured:  {m.measured}",
              f"  verdict:   {m.verdict.upper()}",
              f"  setting:   {m.setting}",
              f"  took:      {m.seconds:.1f} s"]
    for row in m.rows:
        lines.append("    " + ", ".join(f"{k} {_fmt(v)}" for k, v in row.items()))
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float | np.floating):
        return f"{float(value):.4g}"
    return str(value)


# ------------------------------------------------------------------ results on disk (page)

RESULTS_DIR = "paper_checks"  # inside the runs dir


def results_dir(runs_dir: str | Path) -> Path:
    return Path(runs_dir) / RESULTS_DIR


def save_result(runs_dir: str | Path, name: str, size: Size, m: Measurement | None,
                error: str | None = None) -> Path:
    """Write a check's latest result as JSON (what the Paper checks page shows)."""
    import json

    folder = results_dir(runs_dir)
    folder.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {"name": name, "size": size, "finished_at": time.time(),
                           "error": error}
    if m is not None:
        doc.update(measured=m.measured, verdict=m.verdict, setting=m.setting,
                   expected=m.expected, seconds=m.seconds, values=m.values,
                   rows=[{k: _jsonable(v) for k, v in r.items()} for r in m.rows])
    path = folder / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.replace(path)  # readers never see half a file
    return path


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return value


def load_result(runs_dir: str | Path, name: str) -> dict[str, Any] | None:
    import json

    path = results_dir(runs_dir) / f"{name}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def running_pid(runs_dir: str | Path, name: str) -> int | None:
    """The pid of a background run of this check that is still alive, if any."""
    from mtl_core.jobs import pid_alive

    marker = results_dir(runs_dir) / f"{name}.running"
    try:
        pid = int(marker.read_text())
    except (OSError, ValueError):
        return None
    return pid if pid_alive(pid) else None


def start_background(runs_dir: str | Path, name: str, size: Size = "default") -> int:
    """Run `python -m mtl_core reproduce NAME` as its own process (never inside the page);
    its result lands in results_dir. Returns the pid."""
    import subprocess
    import sys

    get_check(name)
    folder = results_dir(runs_dir)
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "mtl_core", "reproduce", name, "--runs-dir", str(runs_dir)]
    if size != "default":
        command.append(f"--{size}")
    with open(folder / f"{name}.log", "w") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                cwd=Path(__file__).resolve().parent.parent)
    (folder / f"{name}.running").write_text(str(proc.pid))
    return proc.pid
