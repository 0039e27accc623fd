"""Forward + backward time and peak memory of the native and the pure-PyTorch rasterisers, in one run.

Each case renders Gaussians from a real initialisation: the embedded demo scene (exact oracle point maps
of its first views, through the project's InstantSplat-style ``init_from_prior`` capped at N Gaussians)
seen from its first training camera, and back-propagates an L2 photometric loss into means, quats,
scales, opacities, colours and the camera's w2c, through the one ``recon.render.rasterize`` entry point.

Every (case, backend) measurement runs in a fresh child process so that peak memory is that of the
measurement alone: peak resident set size during the iterations minus the resident size just before
(Linux ``VmHWM``, reset through ``/proc/self/clear_refs``).  Times are medians over the iterations after
one warm-up iteration: wall-clock ms and process CPU ms (all threads); ratio = torch ms / native ms.
On a machine shared with other jobs the wall-clock numbers swing with the load (OpenMP threads that
lose their core stall every parallel region), so the CPU-time ratio is reported beside them.

    python scripts/bench_raster.py                  # the three default cases, 2 threads
    python scripts/bench_raster.py --json           # one JSON object on stdout
    python scripts/bench_raster.py --cases 128x128/5000 --threads 1
"""

from __future__ import annotations

import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import torch
import tyro
from procmem import mem_kib, reset_peak

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


@dataclass
class BenchConfig:
    """What to measure."""

    cases: tuple[str, ...] = ("128x128/5000", "256x256/20000", "504x378/100000")
    """Cases as WIDTHxHEIGHT/N_GAUSSIANS."""
    backends: tuple[str, ...] = ("native", "torch")
    threads: int = 2
    """CPU threads for both backends (torch.set_num_threads)."""
    iters: int = 5
    """Timed iterations per (case, backend) for the native backend."""
    torch_iters: int = 2
    """Timed iterations for the (much slower) pure-PyTorch backend."""
    n_views: int = 3
    """Demo-scene views whose point maps initialise the Gaussians."""
    json: bool = False
    """Print one JSON object instead of a table."""


@dataclass
class Case:
    width: int
    height: int
    n: int

    @staticmethod
    def parse(s: str) -> Case:
        try:
            size, n = s.split("/")
            w, h = size.lower().split("x")
            return Case(int(w), int(h), int(n))
        except ValueError:
            raise SystemExit(f"bad case {s!r}; use WIDTHxHEIGHT/N, e.g. 256x256/20000") from None


def build_case(case: Case, n_views: int) -> dict[str, torch.Tensor]:
    """Activated Gaussians from the demo scene's initialisation, its first camera and its first image."""
    from recon.gaussians.init import InitConfig, init_from_prior
    from recon.gaussians.model import sh0_to_rgb
    from recon.synthetic import SceneConfig, make_scene

    scene = make_scene(SceneConfig(n_views=n_views, width=case.width, height=case.height, supersample=1))
    gaussians, _ = init_from_prior(scene.prior_result(), InitConfig(max_gaussians=case.n))
    act = gaussians.activated()
    cams = scene.views.cameras
    return {
        "means": act["means"].detach(),
        "quats": act["quats"].detach(),
        "scales": act["scales"].detach(),
        "opacities": act["opacities"].detach(),
        "colors": sh0_to_rgb(gaussians.sh0[:, 0]).clamp_min(0).detach(),
        "w2c": cams.w2c[:1].float(),
        "K": cams.K[:1].float(),
        "target": scene.views.images[:1].float(),
    }


def measure(case_file: str, backend: str, iters: int, threads: int) -> dict:
    """Child process: warm up, then time ``iters`` forward+backward passes; peak RSS above the baseline."""
    torch.set_num_threads(threads)
    from recon.render import native, rasterize

    if backend == "native" and not native.available():
        return {"error": "native kernels unavailable"}
    d = torch.load(case_file, weights_only=True)
    H, W = d["target"].shape[1:3]
    names = ("means", "quats", "scales", "opacities", "colors", "w2c")
    leaves = {k: d[k].clone().requires_grad_(True) for k in names}

    def step():
        for v in leaves.values():
            v.grad = None
        out = rasterize(
            leaves["means"], leaves["quats"], leaves["scales"], leaves["opacities"], leaves["colors"],
            leaves["w2c"], d["K"], W, H, backend=backend,
        )  # fmt: skip
        loss = ((out.rgb - d["target"]) ** 2).mean()
        loss.backward()
        return float(loss.detach())

    # Initialise libraries (thread pools, kernels) on a tiny render before taking the memory baseline.
    tiny = [d[k][:16] if k in names[:5] else d[k] for k in (*names, "K")]
    rasterize(*tiny, 32, 32, backend=backend).rgb.sum()
    gc.collect()
    base = mem_kib("VmRSS")
    have_peak = reset_peak()
    loss = step()  # warm-up (counts for peak memory, not for time)
    times, cpu = [], []
    for _ in range(iters):
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        times.append((time.perf_counter() - t0) * 1e3)
        cpu.append((time.process_time() - c0) * 1e3)
    peak = mem_kib("VmHWM") if have_peak else None
    return {
        "ms": statistics.median(times),
        "cpu_ms": statistics.median(cpu),
        "ms_all": [round(t, 2) for t in times],
        "peak_mib": None if peak is None or base is None else round((peak - base) / 1024, 1),
        "loss": loss,
    }


def _in_child(fn, *args):
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as ex:
        return ex.submit(fn, *args).result()


def main(cfg: BenchConfig) -> dict:
    torch.set_num_threads(cfg.threads)
    if "native" in cfg.backends:
        from recon.render import native

        native.available()  # compile once here (prints a line the first time), children load the cache
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in cfg.cases:
            case = Case.parse(spec)
            d = build_case(case, cfg.n_views)
            path = os.path.join(tmp, f"case_{case.width}x{case.height}_{case.n}.pt")
            torch.save(d, path)
            row = {"width": case.width, "height": case.height, "n_gaussians": int(d["means"].shape[0])}
            for b in cfg.backends:
                r = _in_child(measure, path, b, cfg.torch_iters if b == "torch" else cfg.iters, cfg.threads)
                row[f"{b}_ms"] = None if "error" in r else round(r["ms"], 2)
                row[f"{b}_cpu_ms"] = None if "error" in r else round(r["cpu_ms"], 2)
                row[f"{b}_ms_all"] = r.get("ms_all")
                row[f"{b}_peak_mib"] = r.get("peak_mib")
                row[f"{b}_loss"] = r.get("loss")
                if not cfg.json:
                    print(f"  {spec:>16} {b:>6}: {r}", file=sys.stderr, flush=True)
            if row.get("native_ms") and row.get("torch_ms"):
                row["ratio"] = round(row["torch_ms"] / row["native_ms"], 2)
                row["ratio_cpu"] = round(row["torch_cpu_ms"] / row["native_cpu_ms"], 2)
            results.append(row)
    return {
        "threads": cfg.threads,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "cases": results,
    }


def _print_table(report: dict) -> None:
    print(f"threads={report['threads']}  torch {report['torch']}  ({report['cpu_count']} CPUs visible)")
    cols = ["native_ms", "torch_ms", "ratio", "native_cpu_ms", "torch_cpu_ms", "ratio_cpu",
            "native_peak_mib", "torch_peak_mib"]  # fmt: skip
    print(f"{'case':>18} " + " ".join(f"{c:>15}" for c in cols))
    for r in report["cases"]:
        name = f"{r['width']}x{r['height']}/{r['n_gaussians']}"
        vals = [r.get(c) for c in cols]
        print(f"{name:>18} " + " ".join(f"{v:>15.1f}" if v is not None else f"{'n/a':>15}" for v in vals))


if __name__ == "__main__":
    config = tyro.cli(BenchConfig)
    report = main(config)
    if config.json:
        print(json.dumps(report))
    else:
        _print_table(report)
