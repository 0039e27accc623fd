"""``recon`` command line: a thin tyro layer over the Python API (:mod:`recon.pipeline`).

Exit codes: 0 ok, 2 user error (one line on stderr), 1 internal error, 130 interrupted.
Set ``RECON_DEBUG=1`` to see full tracebacks.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import tyro

from recon.config import ReconConfig
from recon.errors import Interrupted, ReconError
from recon.eval.config import EvalConfig
from recon.export.config import ExportConfig
from recon.options import Port, ranged, validate_options


@dataclass(kw_only=True)
class RunArgs(ReconConfig):
    """Reconstruct Gaussians and camera poses from an image folder or a dataset folder."""

    path: tyro.conf.Positional[Path]
    """An image folder, or a dataset (COLMAP, LLFF, NeRF transforms.json, Middlebury, DTU, Strecha)."""
    out: Path = Path("outputs/run")
    """Output folder (point_cloud.ply, cameras.json, sparse/0, renders/, metrics.json)."""
    resume: bool = False
    """Continue the interrupted run in OUT from its cached prior and last checkpoint; refused (exit 2)
    when the photos or options differ from that run's (OUT/manifest.json); a finished run is left as it
    is."""
    viewer: bool = False
    """Show the scene live in the browser while training (needs the 'viewer' extra)."""
    port: Port = 8080
    """Viewer port (a free one is picked when it is taken; 0: any free one)."""


@dataclass
class DemoArgs:
    """Reconstruct the embedded synthetic scene pose-free (classical prior) and score it against its truth:
    held-out PSNR, pose error, and the Chamfer distance of its exported mesh (OUT/mesh.ply)."""

    out: Path = Path("outputs/demo")
    iters: ranged(int, 10) = 400
    """Optimisation steps (the densification schedule is compressed to them; recon.demo.DEMO_ITERS)."""
    poses: Literal["prior", "dataset"] = "prior"
    """'prior': estimate the cameras (pose-free, the main job); 'dataset': use the scene's true cameras."""


@dataclass(kw_only=True)
class ExportArgs(ExportConfig):
    """Export a reconstruction as a mesh (TSDF fusion), a nerfstudio dataset or a .splat file."""

    out: tyro.conf.Positional[Path]
    """An output folder of `recon run` / `recon demo` (point_cloud.ply, cameras.json, images/)."""
    to: Path | None = None
    """Destination: a .ply/.obj file (mesh), a folder (nerfstudio) or a .splat file; default: OUT/mesh.ply,
    OUT/nerfstudio/ or OUT/point_cloud.splat."""


@dataclass(kw_only=True)
class EvalArgs(EvalConfig):
    """Evaluate the pose-free pipeline on known-pose scenes with a sparse-view protocol.

    Exit codes: 0 every scene was scored; 3 some scene failed (after every result is written; the failed
    scenes count as registered 0 and AUC 0 and are listed); 2 a user error before anything ran (no scene,
    an unusable split); 1 internal error. A rerun skips the scenes already done (--force redoes them).
    """

    scenes: tyro.conf.Positional[list[Path]]
    """Scene folders (any supported dataset format with reference poses)."""
    out: Path = Path("outputs/eval")
    """Output folder: results.json, results.md, report.html and one folder per scene (its reconstruction
    and result.json)."""


@dataclass
class ViewArgs:
    """Open a reconstruction (an output folder of `recon run`) or any 3DGS .ply in the browser viewer."""

    target: tyro.conf.Positional[Path]
    """An output folder (point_cloud.ply, cameras.json, ...) or a 3D Gaussian .ply file."""
    host: str = "127.0.0.1"
    """Address to listen on (127.0.0.1: this machine only; 0.0.0.0: every interface)."""
    port: Port = 8080
    """Port to listen on (a free one is picked when it is taken; 0: any free one)."""


def _eval(args: EvalArgs) -> int:
    from recon.eval.runner import run_eval

    res = run_eval(args.scenes, args.out, args)
    m = res["mean"]
    n = m["scenes"]
    failed = [r for r in res["scenes"] if r.get("error")]
    psnr = "n/a" if m["psnr"] is None else f"{m['psnr']:.2f} dB"
    reused = f", {len(res['skipped'])} reused from an earlier run" if res.get("skipped") else ""
    print(f"recon: {n} scenes ({len(failed)} failed{reused}): mean held-out PSNR {psnr} over "
          f"{m['count']['psnr']} of {n} scenes, AUC@15 {m['auc']['15']:.3f} over all {n} "
          "(a failed scene counts 0)")
    for r in failed:
        print(f"recon: {r['scene']} failed: {r['error']}", file=sys.stderr)
    out = Path(args.out).resolve()
    print(f"recon: results in {out / 'results.md'}, report in {out / 'report.html'}")
    return 3 if failed else 0


def _run(args: RunArgs) -> int:
    from recon.outdir import check_output_folder

    check_output_folder(args.out, args.path)  # before the pipeline's imports: a bad --out fails at once
    from recon.pipeline import run
    from recon.progress import StageLog

    log = StageLog()
    log.add_startup()
    callback, viewer = None, None
    if args.viewer:
        from viewer.live import LiveViewer  # imported only when asked for

        viewer = LiveViewer(port=args.port)
        callback = viewer.callback
    try:
        recon = run(args.path, args.out, args, resume=args.resume, callback=callback, log=log)
    finally:
        if viewer is not None:
            viewer.close()
    _print_views(recon.metrics)
    _print_summary(recon.metrics, args.out)
    return 0


def _print_views(metrics: dict) -> None:
    """How many photos the run used, of how many, and which it left out (each with its reason)."""
    v = metrics.get("views")
    if not v:
        return
    held = v.get("held_out", 0)
    total = v["total"] + held
    line = f"recon: used {v['registered']} of {total} photos for training"
    if held:
        line += f", {held} held out for testing"
    if v["failed"]:
        line += f"; not placed by the prior: {', '.join(f'{k} ({r})' for k, r in v['failed'].items())}"
    print(line)


def _view(args: ViewArgs) -> int:
    from viewer.app import view  # imported only when asked for (needs the 'viewer' extra)

    return view(args.target, host=args.host, port=args.port)


def _demo(args: DemoArgs) -> int:
    from recon.demo import run_demo

    metrics = run_demo(args.out, iters=args.iters, poses=args.poses)
    _print_summary(metrics, args.out)
    parts = []
    if "poses" in metrics:
        p = metrics["poses"]["optimised"]
        parts.append(f"pose error {p['rot_err_deg']:.3f} deg rotation, {p['rre_deg']:.3f} deg RRE")
    sf = metrics["mesh"]["surface"]
    parts.append(f"mesh Chamfer {sf['chamfer']:.4f} ({100 * sf['chamfer_frac']:.2f}% of the scene extent)")
    print(f"recon: {', '.join(parts)}; demo {metrics['demo']['seconds']:.0f} s")
    return 0


def _export(args: ExportArgs) -> int:
    from recon.export.api import export

    res = export(args.out, args, to=args.to)
    details = ", ".join(f"{k} {v:,}" for k, v in res.info.items() if isinstance(v, int))
    print(f"recon: {res.format} export ({details}) written to {res.paths[0].resolve()}")
    return 0


def _print_summary(metrics: dict, out: Path) -> None:
    parts = []
    if "train" in metrics:
        parts.append(f"train PSNR {metrics['train']['psnr']:.2f} dB")
    if "test" in metrics:
        parts.append(f"held-out PSNR {metrics['test']['psnr']:.2f} dB, SSIM {metrics['test']['ssim']:.3f}")
    if "seconds" in metrics:
        parts.append(f"{metrics['seconds']:.0f} s")
    print(f"recon: {', '.join(parts)}")
    print(f"recon: outputs written to {Path(out).resolve()}")


def main(argv: list[str] | None = None) -> int:
    commands = {
        "run": (RunArgs, _run),
        "eval": (EvalArgs, _eval),
        "demo": (DemoArgs, _demo),
        "view": (ViewArgs, _view),
        "export": (ExportArgs, _export),
    }
    try:
        args = tyro.extras.subcommand_cli_from_dict(
            {name: t for name, (t, _) in commands.items()}, args=sys.argv[1:] if argv is None else argv,
            prog="recon",
        )
        handler = next(h for t, h in commands.values() if isinstance(args, t))
        validate_options(args)
        return handler(args)
    except ReconError as e:
        print(f"recon: error: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:  # the message says what was kept and what --resume continues from
        print(f"recon: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("recon: interrupted; files written so far are complete", file=sys.stderr)
        return 130
    except Exception as e:  # an internal error: one line unless debugging
        if os.environ.get("RECON_DEBUG"):
            raise
        print(f"recon: internal error: {type(e).__name__}: {e} (set RECON_DEBUG=1 for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
