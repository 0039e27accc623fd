"""`recon eval` end to end on a small known-pose synthetic dataset, and the refinement-effect report."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from evaldata import tiny_config, tiny_dataset, write_dataset

import recon.eval.runner as runner
from recon.errors import ReconError
from recon.eval.report import stage_seconds
from recon.eval.runner import EvalConfig, _refine_effect, _score, run_eval
from recon.optim.trainer import TrainConfig
from recon.pipeline import ReconConfig, reconstruct
from recon.priors.base import PriorResult
from recon.synthetic import SceneConfig, make_scene, novel_cameras
from recon.views import Views

pytestmark = pytest.mark.usefixtures("single_thread")

ROW_KEYS = {"scene", "views", "registered", "psnr", "ssim", "ate", "rre_deg", "rte_deg", "auc", "seconds"}


@pytest.fixture(scope="module")
def scene():
    return make_scene(SceneConfig(n_views=6, width=192, height=144, seed=0))


def test_eval_runs_pose_free_and_scores_poses_and_held_out_views(scene, tmp_path):
    data = tmp_path / "synthetic_room"
    write_dataset(data, scene)
    cfg = EvalConfig(views=3, max_side=192, test_pose_iters=100, refine_effect=True,
                     train=TrainConfig(iters=200, sh_degree=0))
    res = run_eval([data], tmp_path / "out", cfg)

    on_disk = json.loads((tmp_path / "out" / "results.json").read_text())
    assert on_disk["scenes"][0]["scene"] == "synthetic_room"
    row = res["scenes"][0]
    assert "error" not in row, row.get("error")
    assert ROW_KEYS <= set(row) and set(row["auc"]) == {"5", "15", "30"}
    assert set(res["mean"]) >= ROW_KEYS - {"scene", "views"}
    # 3 of 6 views evenly spaced for training, the other 3 held out; all placed, accurately
    assert row["views"] == 3 and row["registered"] == 3 and len(row["train"]) == 3
    assert row["rre_deg"] < 2.0 and row["auc"]["15"] > 0.8  # measured 0.17 deg at 192 x 144
    assert row["psnr"] > 16.0 and 0.0 < row["ssim"] <= 1.0  # measured 20.7 dB (3 views, 200 steps)
    # the synthetic scene has no outlier camera: pose correction changes nothing, diffusion did not run
    eff = row["refine_effect"]
    assert eff["poses"]["changed"] is False and eff["poses"]["delta"]["psnr"] == 0.0
    assert "skipped" in eff["diffusion"]
    md = (tmp_path / "out" / "results.md").read_text()
    assert "| synthetic_room | 3 | 3 |" in md and "| synthetic_room | poses |" in md
    assert (tmp_path / "out" / "synthetic_room" / "metrics.json").is_file()
    assert len(list((tmp_path / "out" / "synthetic_room" / "renders" / "test").glob("*.png"))) == 3


def test_refine_effect_scores_the_scene_before_a_stage_that_changed_it():
    """A stage whose 'before' state differs is re-scored: 'without' is that state's score, 'with' the
    final one, and the delta is their difference."""
    small = make_scene(SceneConfig(n_views=3, width=96, height=72, seed=0))
    train = small.views
    test_cams = novel_cameras(small, 2)
    test = Views(images=small.render(test_cams)[0], names=test_cams.names, cameras=test_cams)
    cfg = ReconConfig(poses="dataset", train=TrainConfig(iters=150, sh_degree=0))
    recon = reconstruct(train, cfg, prior=small.prior_result(stride=2), progress=False)
    g = recon.gaussians
    worse = dataclasses.replace(g, means=g.means + 0.05 * torch.randn_like(g.means))
    recon = dataclasses.replace(recon, refine_before={"poses": (worse, recon.cameras)})
    poses, tm, _ = _score(recon, train, test, cfg)
    row = {"psnr": tm["psnr"], "ssim": tm["ssim"], "rre_deg": poses["rre_deg"], "rte_deg": poses["rte_deg"]}
    eff = _refine_effect(recon, row, train, test, cfg)
    e = eff["poses"]
    assert e["changed"] is True and e["with"] == row
    assert e["without"]["psnr"] < row["psnr"] - 1.0  # jittered Gaussians render worse
    assert math.isclose(e["delta"]["psnr"], row["psnr"] - e["without"]["psnr"])
    assert "skipped" in eff["diffusion"]


def test_a_held_out_failure_keeps_the_reconstructions_pose_metrics(tmp_path, monkeypatch):
    """A scene that fails after its reconstruction is a failed scene, but its pose metrics are kept."""
    def fail(*args, **kwargs):
        raise ReconError("held-out scoring failed")

    monkeypatch.setattr(runner, "evaluate_held_out", fail)
    data = tiny_dataset(tmp_path / "room")
    row = runner.evaluate_scene(data, tmp_path / "out", tiny_config())
    assert row["error"] == "held-out scoring failed"
    assert row["registered"] == 3 and row["rre_deg"] < 15.0  # measured 2.1 deg
    assert row["auc"]["30"] > 0.5 and stage_seconds(row["timings"]["prior"]) > 0
    assert "psnr" not in row


def test_recon_run_on_a_dataset_counts_views_the_prior_did_not_place():
    """`recon run --poses prior` on a dataset scores every given view, as recon eval does: a view the
    prior could not place is unregistered (its pairs count 180 degrees), not left out."""
    small = make_scene(SceneConfig(n_views=4, width=64, height=48, seed=0))
    full = small.prior_result(stride=2)
    keep = [0, 1, 2]
    prior = PriorResult(
        cameras=full.cameras.subset(keep), pointmaps=full.pointmaps[keep], conf=full.conf[keep],
        colors=full.colors[keep], depth=full.depth[keep], failed={"view_003.png": "too few matches"},
    )
    cfg = ReconConfig(poses="prior", train=TrainConfig(iters=20, sh_degree=0))
    recon = reconstruct(small.views, cfg, prior=prior, progress=False)
    for stage in ("prior", "optimised"):
        m = recon.metrics["poses"][stage]
        assert m["n_views"] == 4 and m["n_registered"] == 3 and m["n_pairs"] == 6
        assert m["rre_deg"] >= 3 * 180.0 / 6  # the 3 pairs with view_003 count 180 degrees
        assert m["auc"]["30"] <= 0.5 + 1e-9
