"""Wall time, CPU time and peak memory of every pipeline stage, beside the accuracy they buy, in one run.

Each case runs the real command line (``python -m recon.cli ...``) in a fresh process, so its numbers are
what a user waits for: process start and imports, loading, the prior's sub-stages (features, matching,
two-view geometry, registration with bundle adjustment, guided matching, dense stereo), initialisation,
training, refinement, held-out pose fitting and export. Stage times come from the run's own records
(``metrics.json`` / ``results.json`` "timings"); "total" is the child's wall time from spawn to exit and
"peak" its resident high-water mark (``wait4``). Accuracy: registered views, relative rotation error
(RRE), AUC@15, training and held-out PSNR.

Suites:
- ``default``: ``recon eval`` on 3 llff_fern views (504 px) and on 3 strecha_fountain-P11 views (1024 px),
  and ``recon demo``.
- ``views``: ``recon run`` on 3, 6, 12 and all 20 fern views at 504 px (pose accuracy against fern's
  reference poses), for cost against the number of views.
- ``sizes``: ``recon run`` on 3 fountain views at a long side of 512, 1024 and 2048 px, for cost against
  image size.

    python scripts/bench_pipeline.py                      # the default suite, a table per case
    python scripts/bench_pipeline.py --json               # one JSON object on stdout
    python scripts/bench_pipeline.py --suite views sizes  # the growth tables (markdown, for the README)

The scenes come from ``../shared/data`` (``--data``); cases whose scene is missing are skipped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import tyro

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

Suite = Literal["default", "views", "sizes"]


@dataclass
class BenchConfig:
    """What to measure."""

    suite: tuple[Suite, ...] = ("default",)
    """Which case lists to run (see the module docstring)."""
    data: Path = REPO.parent / "shared" / "data"
    """Folder holding the scenes (llff_fern, strecha_fountain-P11)."""
    json: bool = False
    """Print one JSON object instead of tables."""
    keep: Path | None = None
    """Keep every case's output folder under this folder (default: a temporary folder, removed)."""
    only: tuple[str, ...] = ()
    """Run only the cases whose name contains one of these words (e.g. ``--only fern demo``)."""
    write: Path | None = None
    """Also put the summary table of each suite into this markdown file (the README), between the lines
    ``<!-- bench-<suite>:start -->`` and ``<!-- bench-<suite>:end -->``."""


@dataclass
class Case:
    """One fresh-process run: a name, the recon arguments, and how to read its results."""

    name: str
    suite: Suite
    kind: Literal["eval", "run", "demo"]
    args: list[str]
    reference: Path | None = None
    """For "run" cases: the dataset whose poses score the estimated cameras."""
    image_names: list[str] = field(default_factory=list)


def _evenly(items: list[str], n: int) -> list[str]:
    from recon.eval.protocols import evenly_spaced

    return evenly_spaced(items, n)


def _image_folder(scene: Path, sub: str, n: int, root: Path) -> tuple[Path, list[str]]:
    """A folder of symlinks to ``n`` evenly spaced images of ``scene/sub``."""
    names = sorted(p.name for p in (scene / sub).iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    pick = _evenly(names, n)
    folder = root / f"{scene.name}_{n}"
    folder.mkdir(parents=True, exist_ok=True)
    for name in pick:
        link = folder / name
        if not link.exists():
            link.symlink_to((scene / sub / name).resolve())
    return folder, pick


def cases(cfg: BenchConfig, work: Path) -> list[Case]:
    fern, fountain = cfg.data / "llff_fern", cfg.data / "strecha_fountain-P11"
    out: list[Case] = []
    if "default" in cfg.suite:
        if fern.is_dir():
            out.append(Case("fern, 3 views, 504 px (eval)", "default", "eval",
                            ["eval", str(fern), "--views", "3"]))
        if fountain.is_dir():
            out.append(Case("fountain, 3 views, 1024 px (eval)", "default", "eval",
                            ["eval", str(fountain), "--views", "3", "--max-side", "1024"]))
        out.append(Case("demo", "default", "demo", ["demo"]))
    if "views" in cfg.suite and fern.is_dir():
        for n in (3, 6, 12, 20):
            folder, names = _image_folder(fern, "images_8", n, work / "inputs")
            out.append(Case(f"fern, {n} views, 504 px (run)", "views", "run", ["run", str(folder)], fern,
                            names))
    if "sizes" in cfg.suite and fountain.is_dir():
        folder, names = _image_folder(fountain, "images", 3, work / "inputs")
        for side in (512, 1024, 2048):
            out.append(Case(f"fountain, 3 views, {side} px (run)", "sizes", "run",
                            ["run", str(folder), "--max-side", str(side)], fountain, names))
    return out


def run_case(case: Case, out: Path) -> dict:
    """Run one case in a fresh process; its stage timings, totals and accuracy."""
    cmd = [sys.executable, "-m", "recon.cli", *case.args, "--out", str(out)]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                            text=True)
    assert proc.stdout is not None
    log = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    row: dict = {"case": case.name, "exit": proc.returncode, "total_wall_s": wall,
                 "total_cpu_s": usage.ru_utime + usage.ru_stime, "peak_mib": usage.ru_maxrss / 1024.0}
    if proc.returncode != 0:
        row["error"] = log.strip().splitlines()[-1] if log.strip() else "no output"
        return row
    if case.kind == "eval":
        res = json.loads((out / "results.json").read_text())
        scene = res["scenes"][0]
        metrics = json.loads((out / scene["scene"] / "metrics.json").read_text())
        row.update(timings=scene.get("timings") or metrics.get("timings", {}),
                   registered=scene.get("registered"), views=scene.get("views"), rre_deg=scene.get("rre_deg"),
                   auc15=(scene.get("auc") or {}).get("15"), test_psnr=scene.get("psnr"),
                   train_psnr=(metrics.get("train") or {}).get("psnr"))
    else:
        metrics = json.loads((out / "metrics.json").read_text())
        views = metrics.get("views") or {}
        row.update(timings=metrics.get("timings", {}), registered=views.get("registered"),
                   views=views.get("total"), train_psnr=(metrics.get("train") or {}).get("psnr"),
                   test_psnr=(metrics.get("test") or {}).get("psnr"))
        poses = metrics.get("poses")
        if case.reference is not None:
            poses = _score_run(out, case.reference, case.image_names)
        if isinstance(poses, dict):
            p = poses.get("optimised", poses)
            row.update(rre_deg=p.get("rre_deg"), auc15=(p.get("auc") or {}).get("15"))
    return row


def _score_run(out: Path, scene: Path, names: list[str]) -> dict:
    """Pose metrics of a run's cameras against the reference poses of the images it was given."""
    from recon.io.cameras_json import load_cameras_json
    from recon.io.datasets import load_views
    from recon.metrics import camera_pose_metrics

    cams, _ = load_cameras_json(out / "cameras.json")
    ref = load_views(scene, max_side=64)  # poses only; small images load fast
    assert ref.cameras is not None
    return camera_pose_metrics(cams, ref.cameras.subset(names))


def _fmt(v, p: int = 1) -> str:
    return "-" if v is None else (f"{v:.{p}f}" if isinstance(v, float) else str(v))


def stage_table(row: dict) -> str:
    lines = [f"### {row['case']}", "", "| stage | wall s | CPU s | peak MiB |", "|---|---|---|---|"]
    for name, t in (row.get("timings") or {}).items():
        if isinstance(t, dict):
            cells = (_fmt(t.get("wall_s")), _fmt(t.get("cpu_s")), _fmt(t.get("peak_mib"), 0))
            lines.append(f"| {name} | {' | '.join(cells)} |")
        else:
            lines.append(f"| {name} | {_fmt(float(t))} | - | - |")
    lines.append(f"| **total (process)** | {_fmt(row['total_wall_s'])} | {_fmt(row['total_cpu_s'])} "
                 f"| {_fmt(row['peak_mib'], 0)} |")
    return "\n".join(lines)


def summary_table(rows: list[dict]) -> str:
    lines = ["| case | wall s | CPU s | peak MiB | registered | RRE deg | AUC@15 | train PSNR "
             "| held-out PSNR |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        reg = "-" if r.get("registered") is None else f"{r['registered']}/{r.get('views')}"
        cells = (r["case"], _fmt(r["total_wall_s"]), _fmt(r["total_cpu_s"]), _fmt(r["peak_mib"], 0), reg,
                 _fmt(r.get("rre_deg"), 2), _fmt(r.get("auc15"), 3), _fmt(r.get("train_psnr"), 2),
                 _fmt(r.get("test_psnr"), 2))
        lines.append("| " + " | ".join(cells) + " |" + (f" error: {r['error']}" if r.get("error") else ""))
    return "\n".join(lines)


def _command_line(suite: str, only: tuple[str, ...] = ()) -> str:
    only = f" --only {' '.join(only)}" if only else ""
    cmd = f"python scripts/bench_pipeline.py --suite {suite}{only} --write README.md"
    return f"(`{cmd}`, one run, {os.cpu_count()} CPUs)"


def main(cfg: BenchConfig) -> None:
    with tempfile.TemporaryDirectory(prefix="recon-bench-") as tmp:
        work = cfg.keep if cfg.keep is not None else Path(tmp)
        rows = []
        todo = [c for c in cases(cfg, work) if not cfg.only or any(w in c.name for w in cfg.only)]
        for i, case in enumerate(todo):
            if not cfg.json:
                print(f"[{i + 1}] {case.name} ...", file=sys.stderr, flush=True)
            rows.append(dict(run_case(case, work / f"case{i}"), suite=case.suite))
    if cfg.write is not None:
        from results_to_readme import replace_block

        from recon.io.atomic import atomic_write_text

        text = cfg.write.read_text()
        for suite in cfg.suite:
            mine = [r for r in rows if r["suite"] == suite]
            text = replace_block(text, summary_table(mine) + "\n\n" + _command_line(suite, cfg.only),
                                 f"<!-- bench-{suite}:start -->", f"<!-- bench-{suite}:end -->")
        atomic_write_text(cfg.write, text)
    if cfg.json:
        print(json.dumps({"machine": {"cpus": os.cpu_count()}, "cases": rows}, indent=1))
        return
    print(summary_table(rows))
    for r in rows:
        print()
        print(stage_table(r))


if __name__ == "__main__":
    main(tyro.cli(BenchConfig))
