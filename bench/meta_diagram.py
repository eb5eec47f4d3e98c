"""What the Train page's diagram costs the Streamlit server: the model built on the meta device
(what ui/diagram.py and mtl_core.limits do now) against a real build (what it did before).

    python bench/meta_diagram.py [--repeat 5]

For each config: median wall time of `limits.meta_model` (meta) and of `build_model` (real),
and the most resident memory either adds while its model is alive (RSS after minus before).
"""
from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
torch.set_num_threads(1)

from mtl_core import limits  # noqa: E402
from mtl_core.config import parse_config  # noqa: E402
from mtl_core.data.base import Split, SuiteData  # noqa: E402
from mtl_core.models import build_model  # noqa: E402

CONFIGS = {
    "default form (synthetic_mmoe, 64-64)": {},
    "wide mlp 3 x 4096 (toy_2d)": {"data": {"suite": "toy_2d"},
                                   "model": {"trunk": {"layers": [4096] * 3}}},
    "mmoe 8 experts x 2048-2048": {"data": {"suite": "synthetic_mmoe"},
                                   "model": {"architecture": "mmoe",
                                             "params": {"n_experts": 8},
                                             "trunk": {"layers": [2048, 2048]}}},
}


def rss_mib() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096 / 2**20


def real(cfg):
    """The model with real weights (kept alive until measured)."""
    tasks, shapes = limits.describe(cfg)
    empty = Split({}, {})
    return build_model(cfg.model, SuiteData("", tasks, empty, empty, empty, shapes, "vector"))


def measure(fn, cfg) -> tuple[float, float]:
    gc.collect()
    before, start = rss_mib(), time.perf_counter()
    result = fn(cfg)
    seconds, grown = time.perf_counter() - start, rss_mib() - before
    del result
    gc.collect()
    return seconds, grown


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print("| config | params | meta ms | real ms | real/meta | meta +MiB | real +MiB |")
    print("|---|---|---|---|---|---|---|")
    for name, doc in CONFIGS.items():
        cfg = parse_config(doc)
        total = sum(limits.count_parameters(cfg).values())
        meta = [measure(limits.meta_model, cfg) for _ in range(args.repeat)]
        full = [measure(real, cfg) for _ in range(args.repeat)]
        m_t, r_t = (statistics.median(s for s, _ in runs) * 1000 for runs in (meta, full))
        m_r, r_r = (max(g for _, g in runs) for runs in (meta, full))
        print(f"| {name} | {total:,} | {m_t:.1f} | {r_t:.1f} | {r_t / m_t:.2g}x | "
              f"{m_r:.1f} | {r_r:.1f} |")


if __name__ == "__main__":
    main()
