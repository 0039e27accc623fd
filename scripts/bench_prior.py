"""Time and peak memory of the learned-prior stage (network + alignment + conversion) for N views.

By default each of the tiny random-weight fixture models (../shared/fixtures/priors) runs on N = 2, 4, 8
synthetic views; ``--checkpoint PATH --kind KIND`` measures a real checkpoint instead. Every (model, N)
measurement runs in a fresh child process, so its memory is that of the stage alone: the peak resident
set size during the call minus the resident size just before it (Linux ``VmHWM``, reset through
``/proc/self/clear_refs``; it includes loading the weights), and on CUDA the peak allocated GPU memory
(``torch.cuda.max_memory_allocated``). Times come from ``PriorResult.info`` (``seconds`` = the whole stage,
including loading the checkpoint; ``network`` and ``align`` its parts).

The fixtures are tiny, so their network times say little about the released models; the pair counts,
batching, alignment and conversion costs are the real ones for the given image and map sizes.

    python scripts/bench_prior.py                                  # fixtures, N = 2, 4, 8, table
    python scripts/bench_prior.py --views 2 4 8 16 --json          # one JSON object on stdout
    python scripts/bench_prior.py --checkpoint ~/ckpt/MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric.pth \\
        --kind mast3r --device cuda --width 512 --height 384
"""

from __future__ import annotations

import gc
import json
import os
import platform
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Literal

import torch
import tyro
from procmem import mem_kib, reset_peak

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

FIXTURES = REPO.parent / "shared" / "fixtures" / "priors"
FIXTURE_KINDS = {
    "dust3r_linear": "dust3r",
    "dust3r_dpt": "dust3r",
    "mast3r_catmlp_dpt": "mast3r",
    "vggt": "vggt",
}


@dataclass
class BenchConfig:
    """What to measure."""

    views: tuple[int, ...] = (2, 4, 8)
    """Numbers of views N."""
    fixtures: tuple[str, ...] = ("dust3r_linear", "dust3r_dpt", "mast3r_catmlp_dpt", "vggt")
    """Fixture models to run (folders of ../shared/fixtures/priors); ignored with --checkpoint."""
    checkpoint: Path | None = None
    """A real checkpoint to measure instead of the fixtures (needs --kind)."""
    kind: Literal["dust3r", "mast3r", "vggt"] | None = None
    width: int = 64
    height: int = 48
    """Size of the synthetic views."""
    resolution: int | None = None
    """Network input size (--learned.resolution); None: the model's training size (512 / 518; 70 for the
    VGGT fixture)."""
    map_max_side: int = 128
    align_iters: int = 100
    batch_size: int = 4
    device: str = "cpu"
    threads: int = 2
    """CPU threads (torch.set_num_threads)."""
    json: bool = False
    """Print one JSON object instead of a table."""


def measure(kind: str, checkpoint: str, n_views: int, cfg: BenchConfig) -> dict:
    """Child process: build the views, then run the prior once; returns its info and the stage's memory."""
    torch.set_num_threads(cfg.threads)
    from recon.priors.align import AlignConfig
    from recon.priors.learned import LearnedConfig, LearnedPrior
    from recon.synthetic import SceneConfig, make_scene

    views = make_scene(SceneConfig(n_views=n_views, width=cfg.width, height=cfg.height)).views
    lcfg = LearnedConfig(
        batch_size=cfg.batch_size,
        resolution=cfg.resolution,
        map_max_side=cfg.map_max_side,
        align=AlignConfig(iters=cfg.align_iters),
    )
    prior = LearnedPrior(kind, checkpoint, lcfg, cfg.device)
    gc.collect()
    base = mem_kib("VmRSS")
    have_peak = reset_peak()
    res = prior(views)
    peak = mem_kib("VmHWM") if have_peak else None
    info = dict(res.info)
    info["stage_peak_rss_mib"] = None if peak is None or base is None else round((peak - base) / 1024, 1)
    info["finite"] = bool(torch.isfinite(res.pointmaps).all() and torch.isfinite(res.cameras.K).all())
    return info


def _in_child(fn, *args):
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as ex:
        return ex.submit(fn, *args).result()


def main(cfg: BenchConfig) -> dict:
    if cfg.checkpoint is not None:
        if cfg.kind is None:
            raise SystemExit("--checkpoint needs --kind {dust3r,mast3r,vggt}")
        models = [(cfg.checkpoint.name, cfg.kind, str(cfg.checkpoint.expanduser()))]
    else:
        models = []
        for name in cfg.fixtures:
            if name not in FIXTURE_KINDS:
                raise SystemExit(f"unknown fixture {name!r}; choose from {', '.join(FIXTURE_KINDS)}")
            path = FIXTURES / name / "weights.safetensors"
            if not path.is_file():
                raise SystemExit(f"{path} is missing (the fixtures live in ../shared/fixtures/priors)")
            models.append((name, FIXTURE_KINDS[name], str(path)))
    rows = []
    for name, kind, path in models:
        for n in cfg.views:
            info = _in_child(measure, kind, path, n, cfg)
            row = {
                "model": name,
                "kind": kind,
                "views": n,
                "pairs": info.get("pairs"),
                "batches": info.get("batches"),
                "network_size": info.get("network_size"),
                "map_size": info.get("map_size"),
                "seconds": info.get("seconds"),
                "seconds_load": info.get("seconds_load"),
                "seconds_network": info.get("seconds_network"),
                "seconds_align": info.get("seconds_align"),
                "stage_peak_rss_mib": info.get("stage_peak_rss_mib"),
                "peak_rss_mb": info.get("peak_rss_mb"),
                "peak_cuda_mb": info.get("peak_cuda_mb"),
                "finite": info.get("finite"),
            }
            rows.append(row)
            if not cfg.json:
                print(f"  {name} N={n}: {row['seconds']} s", file=sys.stderr, flush=True)
    return {
        "device": cfg.device,
        "threads": cfg.threads,
        "image_size": [cfg.width, cfg.height],
        "align_iters": cfg.align_iters,
        "batch_size": cfg.batch_size,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "rows": rows,
    }


def _fmt(v, spec: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, list):
        return "x".join(str(x) for x in v)
    return format(v, spec)


def _print_table(report: dict) -> None:
    w, h = report["image_size"]
    print(
        f"device={report['device']} threads={report['threads']} views {w}x{h} "
        f"align_iters={report['align_iters']} batch={report['batch_size']} torch {report['torch']} "
        f"({report['cpu_count']} CPUs visible)"
    )
    cols = [
        "model",
        "N",
        "pairs",
        "batches",
        "net in",
        "map",
        "total s",
        "net s",
        "align s",
        "RSS MiB",
        "CUDA MiB",
    ]
    widths = [18, 3, 6, 8, 8, 6, 8, 7, 8, 8, 9]
    print(" ".join(c.rjust(wd) for c, wd in zip(cols, widths, strict=True)))
    for r in report["rows"]:
        vals = [
            r["model"],
            _fmt(r["views"]),
            _fmt(r["pairs"]),
            _fmt(r["batches"]),
            _fmt(r["network_size"]),
            _fmt(r["map_size"]),
            _fmt(r["seconds"], ".2f"),
            _fmt(r["seconds_network"], ".2f"),
            _fmt(r["seconds_align"], ".2f"),
            _fmt(r["stage_peak_rss_mib"], ".0f"),
            _fmt(r["peak_cuda_mb"], ".0f"),
        ]
        print(" ".join(v.rjust(wd) for v, wd in zip(vals, widths, strict=True)))


if __name__ == "__main__":
    config = tyro.cli(BenchConfig)
    report = main(config)
    if config.json:
        print(json.dumps(report))
    else:
        _print_table(report)
