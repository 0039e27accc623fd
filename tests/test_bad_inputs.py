"""What recon survives: every input a user can give ends in a result, or in one line and exit code 2
(130/143 when interrupted), never a traceback or exit code 1.

Read the test names as the list:

- resume: another folder, an added photo, a replaced photo, another option -> refused with the reason;
  a finished run resumed -> a no-op that says so; a corrupt cached prior -> refused.
- interrupts: Ctrl-C in training -> checkpoint at that step, exit 130, and the resumed run ends with the
  same Gaussians as an uninterrupted one; SIGTERM -> the same, exit 143; Ctrl-C before training -> the
  prior is kept and --resume says it continues from it.
- output folder: unwritable, under a file, the input folder or inside it -> refused before any work;
  an early error leaves no output folder; a rerun replaces the previous outputs (no stale renders).
- photos: 200-megapixel photos load (small, no PIL warning); above the limit -> refused; every corrupt
  photo named in one message; views the prior cannot place are listed with their reason.
- options: out-of-range numbers and unknown devices -> refused at parse time, ranges shown in --help.

Runs are tiny (64x48 synthetic photos, a few steps); a fake prior with the true cameras stands in for the
classical one where the test is not about the prior.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from test_cli import write_colmap_dataset

from recon import pipeline
from recon.cameras import Cameras
from recon.cli import main
from recon.config import ReconConfig
from recon.errors import Interrupted, ReconError
from recon.gaussians.ply import load_ply
from recon.io.images import MAX_PIXELS, image_size, load_image
from recon.optim.config import TrainConfig
from recon.options import iter_options
from recon.priors.base import PriorResult
from recon.synthetic import SceneConfig, make_scene, save_views

pytestmark = pytest.mark.usefixtures("single_thread")

REPO = Path(__file__).resolve().parents[1]
FAST = ["--iters", "3", "--refine.poses.no-enabled"]


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def _cli(args: list[str], capsys) -> tuple[int, str, list[str]]:
    """(exit code, stdout, stderr lines without the per-stage progress lines)."""
    rc = main([str(a) for a in args])
    cap = capsys.readouterr()
    progress = [ln for ln in cap.err.splitlines() if " done in " in ln and ln.endswith(" s")]
    lines = [ln for ln in cap.err.splitlines() if ln.strip() and ln not in progress]
    assert "Traceback" not in cap.err, cap.err
    return rc, cap.out, lines


def _one_error(rc: int, lines: list[str], *needles: str) -> str:
    """The run failed with exit 2 and one last line naming every needle."""
    assert rc == 2, lines
    assert lines and lines[-1].startswith("recon: error: "), lines
    for n in needles:
        assert n in lines[-1], (n, lines[-1])
    return lines[-1]


@pytest.fixture(scope="module")
def scene():
    return make_scene(SceneConfig(n_views=5, width=64, height=48, seed=3, supersample=1))


@pytest.fixture(scope="module")
def oracle(scene) -> PriorResult:
    return scene.prior_result(stride=2)


@pytest.fixture
def photos(scene, tmp_path) -> Path:
    """Four of the scene's five photos in a plain folder (the fifth is kept back for 'added' cases)."""
    folder = tmp_path / "photos"
    save_views(scene.views.subset([0, 1, 2, 3]), folder)
    return folder


@pytest.fixture
def fake_prior(monkeypatch, oracle):
    """Replace the geometry prior by the scene's true geometry (fast, exact); ``fail`` lists views it
    reports as not placed, ``calls`` counts its runs."""

    class Fake:
        fail: dict[str, str] = {}
        calls = 0

        def __call__(self, views) -> PriorResult:
            Fake.calls += 1
            names = [n for n in views.names if n not in self.fail]
            idx = [oracle.cameras.names.index(n) for n in names]
            c = oracle.cameras
            cams = Cameras(c.K[idx], c.w2c[idx], c.sizes[idx], names)
            failed = {n: r for n, r in self.fail.items() if n in views.names}
            return PriorResult(cams, oracle.pointmaps[idx], oracle.conf[idx], oracle.colors[idx],
                               oracle.depth[idx], failed=failed)

    fake = Fake()
    monkeypatch.setattr(pipeline, "make_prior", lambda *a, **k: fake)
    return fake


# --------------------------------------------------------------------------------------------------
# 1. --resume never mixes runs
# --------------------------------------------------------------------------------------------------


def test_resume_with_another_input_folder_is_refused(scene, photos, fake_prior, tmp_path, capsys):
    out = tmp_path / "out"
    assert _cli(["run", photos, "--out", out, *FAST], capsys)[0] == 0
    before = (out / "cameras.json").read_bytes()
    other = tmp_path / "other"
    save_views(scene.views.subset([1, 2, 3, 4]), other)
    rc, _, lines = _cli(["run", other, "--out", out, "--resume", *FAST], capsys)
    _one_error(rc, lines, "cannot --resume", "view_004.png was added", "view_000.png is missing", str(photos))
    assert (out / "cameras.json").read_bytes() == before  # nothing of the other folder was written


def test_resume_with_an_added_photo_is_refused(scene, photos, fake_prior, tmp_path, capsys):
    out = tmp_path / "out"
    assert _cli(["run", photos, "--out", out, *FAST], capsys)[0] == 0
    save_views(scene.views.subset([4]), photos)
    rc, _, lines = _cli(["run", photos, "--out", out, "--resume", *FAST], capsys)
    _one_error(rc, lines, "view_004.png was added")


def test_resume_with_a_replaced_photo_is_refused(scene, photos, fake_prior, tmp_path, capsys):
    out = tmp_path / "out"
    assert _cli(["run", photos, "--out", out, *FAST], capsys)[0] == 0
    shutil.copy(photos / "view_001.png", photos / "view_002.png")  # same name, other content
    rc, _, lines = _cli(["run", photos, "--out", out, "--resume", *FAST], capsys)
    _one_error(rc, lines, "view_002.png has changed")


def test_resume_with_another_option_names_it(photos, fake_prior, tmp_path, capsys):
    out = tmp_path / "out"
    assert _cli(["run", photos, "--out", out, *FAST], capsys)[0] == 0
    rc, _, lines = _cli(["run", photos, "--out", out, "--resume", *FAST, "--max-side", "64"], capsys)
    _one_error(rc, lines, "--max-side is 64 but the run used 512")
    rc, _, lines = _cli(["run", photos, "--out", out, "--resume", *FAST[2:], "--iters", "4"], capsys)
    _one_error(rc, lines, "--iters is 4 but the run used 3")


def test_resume_of_a_finished_run_is_a_no_op(photos, fake_prior, tmp_path, capsys):
    out = tmp_path / "out"
    assert _cli(["run", photos, "--out", out, *FAST], capsys)[0] == 0
    stamp = (out / "point_cloud.ply").stat().st_mtime_ns
    calls = fake_prior.calls
    rc, stdout, lines = _cli(["run", photos, "--out", out, "--resume", *FAST], capsys)
    assert rc == 0 and any("already finished: nothing to do" in ln for ln in lines), lines
    assert "train PSNR" in stdout  # the finished run's numbers
    assert fake_prior.calls == calls and (out / "point_cloud.ply").stat().st_mtime_ns == stamp
    assert json.loads((out / "manifest.json").read_text())["status"] == "finished"


def test_resume_with_nothing_saved_starts_a_new_run(photos, fake_prior, tmp_path, capsys):
    rc, _, lines = _cli(["run", photos, "--out", tmp_path / "new", "--resume", *FAST], capsys)
    assert rc == 0 and any("nothing to resume in" in ln for ln in lines), lines


def test_resume_with_a_corrupt_cached_prior_is_refused(photos, fake_prior, monkeypatch, tmp_path, capsys):
    out = tmp_path / "out"
    monkeypatch.setattr(pipeline, "init_from_prior", _raise(KeyboardInterrupt()))
    assert _cli(["run", photos, "--out", out, *FAST], capsys)[0] == 130
    monkeypatch.undo()
    (out / "cache" / "prior.safetensors").write_bytes(b"\x00" * 64)
    rc, _, lines = _cli(["run", photos, "--out", out, "--resume", *FAST], capsys)
    _one_error(rc, lines, "cannot read the cached prior", "prior.safetensors")


def _raise(exc: BaseException):
    def f(*args, **kwargs):
        raise exc

    return f


# --------------------------------------------------------------------------------------------------
# 2. Ctrl-C and SIGTERM keep the work
# --------------------------------------------------------------------------------------------------


def _recon(args: list[str]) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "recon.cli", *map(str, args)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_ctrl_c_in_training_keeps_the_step_and_resume_ends_where_an_uninterrupted_run_does(tmp_path):
    data = tmp_path / "scene"
    write_colmap_dataset(data, n_views=4)
    args = ["--poses", "dataset", "--iters", "100"]
    full = _recon(["run", data, "--out", tmp_path / "full", *args])
    assert full.wait(timeout=300) == 0, full.stderr.read()

    out = tmp_path / "out"
    proc = _recon(["run", data, "--out", out, *args])
    seen = []
    for line in proc.stderr:  # a plain progress line every 10 steps (stderr is not a terminal)
        seen.append(line)
        if "recon: train 20/100" in line:
            proc.send_signal(signal.SIGINT)
            break
    rest = proc.stderr.read()
    assert proc.wait(timeout=120) == 130, "".join(seen) + rest
    last = rest.strip().splitlines()[-1]
    assert "Traceback" not in rest and last.startswith("recon: interrupted (Ctrl-C) at training step "), rest
    step = int(last.split("training step ")[1].split()[0])
    assert 20 <= step < 100 and f"--resume continues from step {step}" in last
    assert (out / "checkpoints" / "train_state.pt").is_file() and not (out / "point_cloud.ply").exists()

    resumed = _recon(["run", data, "--out", out, *args, "--resume"])
    err = resumed.stderr.read()
    assert resumed.wait(timeout=300) == 0, err
    assert f"training resumes at step {step} of 100" in err and "prior from its cache" in err
    a, b = load_ply(tmp_path / "full" / "point_cloud.ply"), load_ply(out / "point_cloud.ply")
    for name, value in a.tensors().items():
        assert torch.equal(value, b.tensors()[name]), name


def test_sigterm_in_training_saves_a_checkpoint_and_exits_143(photos, fake_prior, tmp_path, capsys):
    out = tmp_path / "out"

    def terminate_at_step_2(state) -> None:
        if state.step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    def unhandled(signum, frame):  # stands in for SIGTERM's default, which would end the test process
        raise AssertionError("SIGTERM was not handled by recon")

    cfg = ReconConfig(train=TrainConfig(iters=6, callback_every=1))
    cfg.refine.poses.enabled = False
    previous = signal.signal(signal.SIGTERM, unhandled)
    try:
        with pytest.raises(Interrupted) as info:
            pipeline.run(photos, out, cfg, callback=terminate_at_step_2, progress=False)
    finally:
        signal.signal(signal.SIGTERM, previous)
    e = info.value
    assert e.exit_code == 143 and e.step == 2  # handled before the next step starts
    assert "SIGTERM" in str(e) and "--resume continues from step 2" in str(e)
    rc, _, lines = _cli(["run", photos, "--out", out, "--resume", "--iters", "6", "--callback-every", "1",
                         "--refine.poses.no-enabled"], capsys)
    assert rc == 0 and any("training resumes at step 2 of 6" in ln for ln in lines), lines


def test_ctrl_c_before_training_keeps_the_prior(photos, fake_prior, monkeypatch, tmp_path, capsys):
    out = tmp_path / "out"
    monkeypatch.setattr(pipeline, "init_from_prior", _raise(KeyboardInterrupt()))
    rc, _, lines = _cli(["run", photos, "--out", out, *FAST], capsys)
    assert rc == 130 and "continues from the cached prior (training starts at step 0)" in lines[-1], lines
    assert fake_prior.calls == 1
    monkeypatch.undo()
    monkeypatch.setattr(pipeline, "make_prior", lambda *a, **k: fake_prior)
    rc, _, lines = _cli(["run", photos, "--out", out, "--resume", *FAST], capsys)
    assert rc == 0 and fake_prior.calls == 1  # the prior came from the cache
    assert any("prior from its cache" in ln for ln in lines)
    assert any("no training checkpoint yet: training starts at step 0" in ln for ln in lines)


# --------------------------------------------------------------------------------------------------
# 3, 6, 8. The output folder
# --------------------------------------------------------------------------------------------------


def test_unwritable_out_is_refused_before_any_work(photos, monkeypatch, tmp_path, capsys):
    import tempfile

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    out = tmp_path / "ro"
    out.mkdir()
    monkeypatch.setattr(tempfile, "mkstemp", denied)  # as a read-only folder answers (even for root)
    rc, _, lines = _cli(["run", photos, "--out", out, *FAST], capsys)
    _one_error(rc, lines, "is not writable", "Permission denied")
    assert not any("load" in ln for ln in lines) and not list(out.iterdir())


def test_out_under_a_file_is_refused(photos, tmp_path, capsys):
    (tmp_path / "file.txt").write_text("x")
    rc, _, lines = _cli(["run", photos, "--out", tmp_path / "file.txt" / "out", *FAST], capsys)
    _one_error(rc, lines, "is a file")


@pytest.mark.parametrize("where", ["same", "inside"])
def test_out_in_the_input_folder_is_refused(photos, tmp_path, capsys, where):
    out = photos if where == "same" else photos / "recon"
    names = sorted(p.name for p in photos.iterdir())
    rc, _, lines = _cli(["run", photos, "--out", out, *FAST], capsys)
    _one_error(rc, lines, "input folder", "choose a folder outside it")
    assert sorted(p.name for p in photos.iterdir()) == names


def test_early_errors_leave_no_output_folder(photos, fake_prior, monkeypatch, tmp_path, capsys):
    (photos / "broken.png").write_bytes(b"not a png")
    rc, _, lines = _cli(["run", photos, "--out", tmp_path / "o1", *FAST], capsys)
    _one_error(rc, lines, "broken.png")
    assert not (tmp_path / "o1").exists()
    (photos / "broken.png").unlink()
    monkeypatch.setattr(pipeline, "make_prior", lambda *a, **k: _raise(ReconError("photos share nothing")))
    rc, _, lines = _cli(["run", photos, "--out", tmp_path / "o2", *FAST], capsys)
    _one_error(rc, lines, "photos share nothing")
    assert not (tmp_path / "o2").exists()


def test_held_out_views_without_reference_poses_are_refused_before_any_work(photos, monkeypatch, tmp_path,
                                                                            capsys):
    """--test-every on a plain photo folder (no reference poses to place the held-out views): one line and
    exit 2 right after loading the photos, before the prior runs, with no output folder left."""
    calls = []
    monkeypatch.setattr(pipeline, "make_prior", lambda *a, **k: calls.append(a))
    t0 = time.perf_counter()
    rc, _, lines = _cli(["run", photos, "--out", tmp_path / "out", "--test-every", "2", *FAST], capsys)
    seconds = time.perf_counter() - t0
    _one_error(rc, lines, "--test-every needs reference poses", "drop --test-every")
    assert calls == [] and not (tmp_path / "out").exists()
    assert seconds < 1.0, seconds  # parsing and loading four small photos, nothing more


def test_a_rerun_replaces_the_previous_outputs(scene, photos, fake_prior, tmp_path, capsys):
    out = tmp_path / "out"
    assert _cli(["run", photos, "--out", out, *FAST], capsys)[0] == 0
    fewer = tmp_path / "fewer"
    save_views(scene.views.subset([1, 2, 3]), fewer)
    assert _cli(["run", fewer, "--out", out, *FAST], capsys)[0] == 0
    expected = ["view_001.png", "view_002.png", "view_003.png"]
    assert sorted(p.name for p in (out / "renders" / "train").iterdir()) == expected
    assert sorted(p.name for p in (out / "images").iterdir()) == expected
    assert [c["name"] for c in json.loads((out / "cameras.json").read_text())["cameras"]] == expected
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging or aside folders left


# --------------------------------------------------------------------------------------------------
# 4, 5, 8. Photos
# --------------------------------------------------------------------------------------------------


def test_a_200_megapixel_photo_loads_small_without_warnings(tmp_path):
    from PIL import Image

    path = tmp_path / "phone.jpg"
    Image.new("L", (16320, 12240), 128).save(path, quality=50)  # a 200 MP phone photo's size (2 MB)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        img, _ = load_image(path, max_side=128)
        assert image_size(path) == (16320, 12240)
    assert img.shape == (96, 128, 3) and abs(float(img.mean()) - 128 / 255) < 0.01


def test_a_photo_above_the_size_limit_is_refused(photos, tmp_path, capsys):
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    side = int((MAX_PIXELS * 1.1) ** 0.5)  # just above the limit: a valid header, (almost) no pixels
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    chunks = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    (photos / "huge.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunks)
    rc, _, lines = _cli(["run", photos, "--out", tmp_path / "out", *FAST], capsys)
    _one_error(rc, lines, "huge.png", "megapixels")


def test_every_corrupt_photo_is_named_in_one_message(photos, tmp_path, capsys):
    for name in ("a.jpg", "b.png", "c.tif"):
        (photos / name).write_bytes(b"garbage")
    rc, _, lines = _cli(["run", photos, "--out", tmp_path / "out", *FAST], capsys)
    _one_error(rc, lines, "3 of 7 images", "a.jpg", "b.png", "c.tif")


def test_views_the_prior_cannot_place_are_listed(photos, fake_prior, tmp_path, capsys):
    fake_prior.fail = {"view_002.png": "17 verified matches, needs 30"}
    rc, stdout, lines = _cli(["run", photos, "--out", tmp_path / "out", *FAST], capsys)
    assert rc == 0
    assert "recon: view view_002.png not placed, left out: 17 verified matches, needs 30" in lines
    assert "used 3 of 4 photos" in stdout and "view_002.png (17 verified matches, needs 30)" in stdout


def test_degenerate_matches_of_tiny_photos_are_no_model_not_a_crash():
    """OpenCV's MAGSAC asserts on these 8 matches (found between two 96x72 photos); no model instead."""
    from recon.priors.classical.twoview import fundamental_magsac

    xa = np.array([[9.002, 55.327], [10.950, 55.186], [77.515, 71.594], [49.384, 24.558], [0.2245, 15.137],
                   [62.019, 21.983], [18.439, 7.774], [51.250, 6.457]], np.float32)
    xb = np.array([[10.892, 52.926], [11.880, 52.727], [17.641, 68.564], [52.162, 24.015], [37.707, 70.256],
                   [66.344, 21.444], [26.496, 7.205], [57.675, 5.034]], np.float32)
    F, inliers = fundamental_magsac(xa, xb, 0.75, 0.9999, 10000)
    assert inliers.shape == (8,)
    assert F is None or F.shape == (3, 3)


# --------------------------------------------------------------------------------------------------
# 7. Options
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "option,needle",
    [
        (["--max-side", "0"], "--max-side must be at least 64, got 0"),
        (["--max-side", "16"], "--max-side must be at least 64, got 16"),
        (["--iters", "-5"], "--iters must be at least 1, got -5"),
        (["--device", "tpu"], "--device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got 'tpu'"),
        (["--test-every", "1"], "--test-every 1"),
        (["--ssim-lambda", "2"], "--ssim-lambda must be in [0, 1], got 2.0"),
        (["--classical.sfm.ratio", "0"], "--classical.sfm.ratio must be in (0, 1], got 0.0"),
        (["--background", "0", "0", "2"], "--background must be in [0, 1], got 0.0 0.0 2.0"),
        (["--port", "70000"], "--port must be in [0, 65535], got 70000"),
        (["--classical.dense.window", "4"], "odd"),
    ],
)
def test_out_of_range_options_are_refused_at_parse_time(photos, tmp_path, capsys, option, needle):
    rc, _, lines = _cli(["run", photos, "--out", tmp_path / "out", *option], capsys)
    _one_error(rc, lines, needle)
    assert len(lines) == 1 and not (tmp_path / "out").exists()  # nothing ran


def test_every_numeric_option_has_a_range_shown_in_help(capsys):
    unranged = [flag for flag, value, rng in iter_options(ReconConfig())
                if rng is None and _numeric(value)]
    assert not unranged, unranged
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    help_text = capsys.readouterr().out
    for shown in ("--iters INT>=1", "--max-side INT>=64", "--ssim-lambda FLOAT[0,1]", "--port INT[0,65535]"):
        assert shown in help_text, shown


def _numeric(value) -> bool:
    values = value if isinstance(value, (tuple, list)) else (value,)
    return any(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
