"""The effect of each refinement stage, with and without it, on the synthetic scene and shared scenes.

Pose correction: the training views' geometry prior (the synthetic oracle, or dense stereo with the
dataset's poses on a real scene) with ONE camera rotated by ``--rot-deg`` and shifted (its point map moved
with it: the feed-forward-prior outlier case). Rows: the clean prior; the perturbed prior without
correction; the perturbed prior with correction. Columns: held-out PSNR (test cameras aligned on the
inlier training cameras, then pose-refined against the frozen Gaussians, InstantSplat's protocol) and the
outlier camera's rotation error.

Diffusion: with ``--diffusion-model PATH``, the stage with that model against the same steps with an
identity enhancer (pseudo views = own renders); on the synthetic scene also an oracle enhancer (the true
images of the pseudo poses), the upper bound a perfect model would reach. Without a model the real-model
rows say n/a.

Usage::

    python scripts/eval_refine.py OUT [--scenes ../shared/data/llff_fern ...] [--diffusion-model DIR]

Writes OUT/refine_results.md and OUT/refine_results.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch

from recon.cameras import rotation_angle_deg, transform_points
from recon.eval.protocols import make_split
from recon.gaussians.init import InitConfig, init_from_prior
from recon.io.atomic import atomic_write_json, atomic_write_text
from recon.io.datasets import load_views
from recon.optim.heldout import align_reference_cameras, evaluate_test_views
from recon.optim.trainer import TrainConfig, train
from recon.priors.classical.prior import ClassicalConfig
from recon.priors.factory import dense_prior_for_cameras
from recon.refine import RefineConfig, RefineContext, Scene, build_stages, refine
from recon.refine.diffusion import DiffusionConfig
from recon.synthetic import SceneConfig, make_scene, novel_cameras, perturb_cameras


def perturb_prior(prior, index: int, rot_deg: float, trans: float, seed: int):
    """The prior with camera ``index`` perturbed and its point map carried along (geometry right in its
    own camera frame, pose wrong)."""
    cams = prior.cameras.clone()
    new = perturb_cameras(cams, rot_deg, trans, seed).w2c[index].double()
    T = torch.linalg.inv(new) @ cams.w2c[index].double()  # old world -> new world for that view
    pm = prior.pointmaps.clone()
    pm[index] = transform_points(T, pm[index].double().reshape(-1, 3)).reshape(pm[index].shape).float()
    cams.w2c[index] = new.float()
    return dataclasses.replace(prior, cameras=cams, pointmaps=pm)


def run_case(prior, images, ref, test_cams, test_imgs, outlier, train_cfg, init_cfg, refine_cfg,
             enhancer=None):
    g, _ = init_from_prior(prior, init_cfg)
    res = train(g, prior.cameras, images, train_cfg, progress=False)
    out = refine(
        Scene(res.gaussians, res.cameras),
        RefineContext(images, train_cfg, res.scene_extent, prior=prior, init_cfg=init_cfg, progress=False,
                      log=lambda s: None),
        build_stages(refine_cfg, enhancer),
    )
    inl = [i for i in range(len(ref)) if i != outlier]
    cams = align_reference_cameras(out.cameras.subset(inl), ref.subset(inl), test_cams)
    scores, _, _ = evaluate_test_views(out.gaussians, cams, test_imgs, fit_pose_iters=100)
    truth = align_reference_cameras(out.cameras.subset(inl), ref.subset(inl), ref.subset([outlier]))
    err = float(rotation_angle_deg(out.cameras.w2c[outlier, :3, :3].double(), truth.w2c[0, :3, :3].double()))
    return {"psnr": scores.psnr, "outlier_rot_err_deg": err, "refine_s": out.seconds,
            "corrected": out.metrics["poses"].get("corrected", []), "metrics": out.metrics}


def pose_rows(name, prior, images, ref, test_cams, test_imgs, args, train_cfg, init_cfg):
    bad = perturb_prior(prior, args.outlier, args.rot_deg, args.trans_frac * _extent(ref), seed=3)
    on, off = RefineConfig(), RefineConfig()
    off.poses.enabled = False
    rows = []
    cases = [("clean prior", prior, off), ("1 outlier, no correction", bad, off),
             ("1 outlier, pose correction", bad, on), ("clean prior, pose correction", prior, on)]
    for label, p, cfg in cases:
        r = run_case(p, images, ref, test_cams, test_imgs, args.outlier, train_cfg, init_cfg, cfg)
        rows.append({"scene": name, "stage": "poses", "case": label, **r})
        err = r["outlier_rot_err_deg"]
        print(f"{name:28s} {label:32s} PSNR {r['psnr']:6.2f}  outlier err {err:6.2f} deg")
    return rows


def diffusion_rows(name, prior, images, ref, test_cams, test_imgs, args, train_cfg, init_cfg, oracle=None):
    rows = []
    off = RefineConfig()
    off.poses.enabled = False
    r = run_case(prior, images, ref, test_cams, test_imgs, -1, train_cfg, init_cfg, off)
    rows.append({"scene": name, "stage": "diffusion", "case": "no diffusion stage", **r})
    print(f"{name:28s} {'no diffusion stage':32s} PSNR {r['psnr']:6.2f}")
    enhancers = {"identity enhancer": lambda renders, cams, refs, s: renders}
    if oracle is not None:
        enhancers["oracle enhancer"] = oracle
    cfgs = {k: (None, v) for k, v in enhancers.items()}
    if args.diffusion_model is not None:
        cfgs["model " + Path(args.diffusion_model).name] = (args.diffusion_model, None)
    for label, (model, enh) in cfgs.items():
        cfg = RefineConfig()
        cfg.poses.enabled = False
        cfg.diffusion = DiffusionConfig(model=model, rounds=2, steps_per_round=args.diffusion_steps // 2,
                                        num_pseudo=8, pseudo_weight=0.5)
        r = run_case(prior, images, ref, test_cams, test_imgs, -1, train_cfg, init_cfg, cfg, enhancer=enh)
        rows.append({"scene": name, "stage": "diffusion", "case": label, **r})
        print(f"{name:28s} {label:32s} PSNR {r['psnr']:6.2f}")
    if args.diffusion_model is None:
        rows.append({"scene": name, "stage": "diffusion", "case": "real model", "psnr": None,
                     "note": "n/a: no --diffusion-model given"})
    return rows


def _extent(cams) -> float:
    c = cams.centers.double()
    return float((c - c.mean(0)).norm(dim=1).max().clamp_min(1e-6)) * 2


def markdown(rows) -> str:
    def f(v, p=2):
        return "n/a" if v is None else f"{v:.{p}f}"

    lines = ["| scene | stage | case | held-out PSNR | outlier rot. err (deg) | corrected | refine s "
             "| note |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        err = r.get("outlier_rot_err_deg") if r.get("stage") == "poses" else None
        lines.append(f"| {r['scene']} | {r['stage']} | {r['case']} | {f(r.get('psnr'))} | {f(err)} "
                     f"| {', '.join(r.get('corrected', []))} | {f(r.get('refine_s'), 0)} "
                     f"| {r.get('note', '')} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--scenes", type=Path, nargs="*", default=[], help="shared scene folders (known poses)")
    ap.add_argument("--views", type=int, default=5, help="training views per scene")
    ap.add_argument("--max-side", type=int, default=96, help="image long side (small: this runs on a CPU)")
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--outlier", type=int, default=2, help="index of the perturbed training camera")
    ap.add_argument("--rot-deg", type=float, default=60.0)
    ap.add_argument("--trans-frac", type=float, default=0.15, help="shift, fraction of the camera spread")
    ap.add_argument("--diffusion-model", type=Path, default=None)
    ap.add_argument("--diffusion-steps", type=int, default=300)
    ap.add_argument("--stages", nargs="+", choices=["poses", "diffusion"], default=["poses", "diffusion"])
    args = ap.parse_args()
    torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
    train_cfg = TrainConfig(iters=args.iters, sh_degree=0)
    init_cfg = InitConfig(max_gaussians=5000)
    rows: list[dict] = []

    def save():
        args.out.mkdir(parents=True, exist_ok=True)
        clean = [{k: v for k, v in r.items() if k != "metrics"} for r in rows]
        atomic_write_json(args.out / "refine_results.json", json.loads(json.dumps(clean, default=str)))
        atomic_write_text(args.out / "refine_results.md", markdown(rows))

    # Synthetic: 5 views for pose correction, 3 views (60-degree arc) for diffusion.
    H = args.max_side * 3 // 4
    s = make_scene(SceneConfig(n_views=args.views, width=args.max_side, height=H, seed=0))
    tc = novel_cameras(s, 4)
    if "poses" in args.stages:
        rows += pose_rows("synthetic", s.prior_result(stride=2), s.views.images, s.views.cameras, tc,
                          s.render(tc)[0], args, train_cfg, init_cfg)
        save()
    if "diffusion" in args.stages:
        s3 = make_scene(SceneConfig(n_views=3, width=args.max_side, height=H, seed=0, arc_deg=60.0))
        tc3 = novel_cameras(s3, 4)
        rows += diffusion_rows("synthetic (3 views)", s3.prior_result(stride=2), s3.views.images,
                               s3.views.cameras, tc3, s3.render(tc3)[0], args,
                               dataclasses.replace(train_cfg, optimize_poses=False), init_cfg,
                               oracle=lambda renders, cams, refs, st: s3.render(cams)[0])
        save()
    for scene in args.scenes:
        views = load_views(scene, max_side=args.max_side)
        split = make_split(views.names, views.source, args.views)
        tr, te = views.subset(split.train), views.subset(split.test[:4])
        prior = dense_prior_for_cameras(tr, tr.cameras, ClassicalConfig())
        if "poses" in args.stages:
            rows += pose_rows(scene.name, prior, tr.images, tr.cameras, te.cameras, te.images, args,
                              train_cfg, init_cfg)
            save()
        if "diffusion" in args.stages:
            rows += diffusion_rows(scene.name, prior, tr.images, tr.cameras, te.cameras, te.images, args,
                                   train_cfg, init_cfg)
            save()
    print(markdown(rows))


if __name__ == "__main__":
    main()
