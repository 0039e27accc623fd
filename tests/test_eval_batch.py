"""`recon eval` batches: failed scenes in the summary and the exit code, user errors before anything runs,
resuming a batch from the per-scene result files, report.html in a real browser, and the README table
script."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from evaldata import TINY_CLI, posefree_folder, tiny_dataset

import recon.eval.runner as runner
from recon.cli import main
from recon.eval.config import EvalConfig
from recon.eval.report import camera_plot_svg, markdown_table, mean_row
from recon.synthetic import SceneConfig, make_scene, save_views
from viewer.browser import HeadlessBrowser, find_chromium

pytestmark = pytest.mark.usefixtures("single_thread")

REPO = Path(__file__).resolve().parents[1]


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """One `recon eval` of a tiny known-pose scene and a folder without poses (which fails)."""
    root = tmp_path_factory.mktemp("batch")
    room = tiny_dataset(root / "data" / "room")
    nopose = posefree_folder(root / "data" / "nopose", room)
    out = root / "out"
    rc, stdout, stderr = run_cli(["eval", str(room), str(nopose), "--out", str(out), *TINY_CLI])
    return SimpleNamespace(root=root, room=room, nopose=nopose, out=out, rc=rc, stdout=stdout, stderr=stderr,
                           results=json.loads((out / "results.json").read_text()))


def test_a_failed_scene_is_counted_reported_and_exits_3(batch):
    assert batch.rc == 3, batch.stderr
    rows = {r["scene"]: r for r in batch.results["scenes"]}
    assert list(rows) == ["room", "nopose"]
    room, nopose = rows["room"], rows["nopose"]
    assert "error" not in room and room["registered"] == 3 and room["ate"] is not None
    assert "no reference poses" in nopose["error"]
    assert nopose["registered"] == 0 and nopose["auc"] == {"5": 0.0, "15": 0.0, "30": 0.0}
    m = batch.results["mean"]
    assert m["scenes"] == 2 and m["failed"] == 1
    # counted: the failed scene pulls the registered and AUC means down
    assert m["registered"] == pytest.approx(room["registered"] / 2)
    assert m["auc"]["15"] == pytest.approx(room["auc"]["15"] / 2)
    # not counted: averaged over the 1 scene that has a value, and said so
    assert m["psnr"] == pytest.approx(room["psnr"]) and m["count"]["psnr"] == 1
    md = (batch.out / "results.md").read_text()
    assert "**mean (2 scenes, 1 failed)**" in md and f"{room['psnr']:.2f} (1 of 2)" in md
    assert "over 1 of 2 scenes" in batch.stdout and "over all 2" in batch.stdout
    assert "nopose failed:" in batch.stderr and "no reference poses" in batch.stderr
    # every result was written before the exit
    for name in ("room", "nopose"):
        saved = json.loads((batch.out / name / "result.json").read_text())
        assert saved["result"]["scene"] == name and saved["config"]["views"] == 3
    assert (batch.out / "report.html").is_file()


def test_no_scene_is_a_user_error(tmp_path):
    rc, _, err = run_cli(["eval", "--out", str(tmp_path / "out")])
    assert rc == 2 and "at least one scene" in err and err.count("\n") == 1


def test_empty_and_overlapping_splits_stop_the_batch_before_anything_runs(tmp_path):
    three = tiny_dataset(tmp_path / "three", n_views=3, width=64, height=48)
    out = tmp_path / "out"
    # 3 images, 3 training views: nothing left to test on
    rc, _, err = run_cli(["eval", str(three), "--out", str(out), *TINY_CLI])
    assert rc == 2 and "view_000.png, view_001.png, view_002.png" in err and "no test image" in err
    assert not (out / "three" / "result.json").exists() and not (out / "results.json").exists()
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": ["view_000.png", "view_001.png"], "test": ["view_001.png"]}))
    rc, _, err = run_cli(["eval", str(three), "--out", str(out), "--split", str(split), *TINY_CLI])
    assert rc == 2 and "view_001.png both for training and for testing" in err
    assert not (out / "three").exists()


def test_a_rerun_reuses_finished_scenes_and_rebuilds_the_summary(batch, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(batch.out, out)
    room_result = out / "room" / "result.json"
    before = (room_result.read_bytes(), room_result.stat().st_mtime_ns)
    for f in ("results.json", "results.md", "report.html"):
        (out / f).unlink()
    rc, stdout, _ = run_cli(["eval", str(batch.room), str(batch.nopose), "--out", str(out), *TINY_CLI])
    assert rc == 3 and "1 reused from an earlier run" in stdout  # the failed scene was tried again
    assert (room_result.read_bytes(), room_result.stat().st_mtime_ns) == before
    rebuilt = json.loads((out / "results.json").read_text())
    assert rebuilt["scenes"][0] == batch.results["scenes"][0]
    assert rebuilt["mean"] == batch.results["mean"] | {"seconds": rebuilt["mean"]["seconds"]}
    assert (out / "results.md").is_file() and (out / "report.html").is_file()


def _stub_scenes(root: Path) -> list[Path]:
    """Two plain image folders (no poses: the split check before a batch leaves them to the scene run)."""
    img = make_scene(SceneConfig(n_views=1, width=16, height=12)).views
    scenes = []
    for name in ("s1", "s2"):
        save_views(img, root / name)
        scenes.append(root / name)
    return scenes


def test_resume_skips_done_scenes_of_the_same_configuration_only(tmp_path, monkeypatch):
    calls: list[str] = []
    fail = set()

    def fake_evaluate_scene(scene, out, cfg):
        calls.append(scene.name)
        row = {"scene": scene.name, "path": str(Path(scene).resolve()), "views": cfg.views, "registered": 2,
               "psnr": 20.0 + len(calls), "auc": {"5": 1.0, "15": 1.0, "30": 1.0}, "seconds": 0.1}
        if scene.name in fail:
            row["error"] = "boom"
        return row

    monkeypatch.setattr(runner, "evaluate_scene", fake_evaluate_scene)
    scenes = _stub_scenes(tmp_path / "data")
    out = tmp_path / "out"
    cfg = EvalConfig(views=2)
    first = runner.run_eval(scenes, out, cfg)
    assert calls == ["s1", "s2"] and first["skipped"] == []
    calls.clear()
    (out / "results.json").unlink()
    again = runner.run_eval(scenes, out, cfg)
    assert calls == [] and again["skipped"] == ["s1", "s2"]
    assert json.loads((out / "results.json").read_text())["scenes"] == first["scenes"]  # from the files
    # execution settings do not change a result; what it is computed with does
    runner.run_eval(scenes, out, EvalConfig(views=2, ray_cpus=4.0))
    assert calls == []
    runner.run_eval(scenes, out, EvalConfig(views=3))
    assert calls == ["s1", "s2"]
    calls.clear()
    runner.run_eval(scenes, out, EvalConfig(views=3, force=True))
    assert calls == ["s1", "s2"]
    # a failed scene is tried again; the finished one is not
    calls.clear()
    fail.add("s2")
    runner.run_eval(scenes, out, EvalConfig(views=4))
    calls.clear()
    fail.clear()
    res = runner.run_eval(scenes, out, EvalConfig(views=4))
    assert calls == ["s2"] and res["skipped"] == ["s1"] and not any(r.get("error") for r in res["scenes"])
    # a result of another folder with the same name is not this scene's
    other = _stub_scenes(tmp_path / "elsewhere")
    calls.clear()
    runner.run_eval(other, out, EvalConfig(views=4))
    assert calls == ["s1", "s2"]
    # two scenes whose results would share OUT/<name>
    with pytest.raises(runner.ReconError, match="share a folder name"):
        runner.run_eval([scenes[0], other[0]], out, EvalConfig(views=4))


needs_chromium = pytest.mark.skipif(find_chromium() is None, reason="chromium is not installed")


@needs_chromium
def test_report_html_is_self_contained_and_its_images_load_in_chromium(batch):
    report = batch.out / "report.html"
    text = report.read_text()
    assert 'src="http' not in text and 'src="file' not in text  # every image is embedded
    room = next(r for r in batch.results["scenes"] if r["scene"] == "room")
    n_test = len(room["test"])
    assert n_test == 2
    with HeadlessBrowser(1000, 800) as browser:
        browser.navigate(report.resolve().as_uri())
        assert browser.wait_for("document.readyState === 'complete'", timeout=30)
        images = browser.evaluate("[...document.images].map(i => [i.complete, i.naturalWidth, i.alt])")
        svg = browser.evaluate("[document.querySelectorAll('#scene-room svg circle.reference').length, "
                               "document.querySelectorAll('#scene-room svg circle.estimated').length]")
        headings = browser.evaluate("[...document.querySelectorAll('h2, h3')].map(h => h.textContent)")
        timings = browser.evaluate("document.querySelector('#scene-room table.timings').innerText")
        summary = browser.evaluate("document.querySelector('table').innerText")
    assert len(images) == 3 * n_test  # render, photo and error map of each held-out view
    assert all(complete and width > 0 for complete, width, _ in images), images
    assert {alt.split()[-1] for _, _, alt in images} == {"render", "photo", "error"}
    assert svg == [3, 3]  # the 3 training cameras, reference and aligned estimate
    assert "Stage timings" in headings and "room" in headings and "nopose" in headings
    assert "prior" in timings and "train" in timings and "held-out pose fitting" in timings
    assert "mean (2 scenes, 1 failed)" in summary


def test_results_to_readme_prints_or_replaces_the_marked_table(batch, tmp_path):
    script = REPO / "scripts" / "results_to_readme.py"
    res = batch.out / "results.json"
    printed = subprocess.run([sys.executable, str(script), str(res)], capture_output=True, text=True,
                             check=True).stdout
    room = batch.results["scenes"][0]
    assert printed.startswith("| scene | registered | PSNR |")
    assert f"| room | 3/3 | {room['psnr']:.2f} |" in printed and "| nopose | 0/3 | n/a |" in printed
    assert "**mean (2 scenes, 1 failed)**" in printed
    readme = tmp_path / "README.md"
    readme.write_text("# title\n\nbefore\n<!-- results-table:start -->\n| old | table |\n"
                      "<!-- results-table:end -->\nafter\n")
    subprocess.run([sys.executable, str(script), str(res), "--write", str(readme)], check=True,
                   capture_output=True)
    text = readme.read_text()
    assert "| old | table |" not in text and printed.strip() in text
    assert text.startswith("# title\n\nbefore\n<!-- results-table:start -->\n| scene |")
    assert text.endswith("<!-- results-table:end -->\nafter\n")
    no_markers = tmp_path / "plain.md"
    no_markers.write_text("nothing here\n")
    p = subprocess.run([sys.executable, str(script), str(res), "--write", str(no_markers)],
                       capture_output=True, text=True)
    assert p.returncode == 2 and "results-table:start" in p.stderr
    assert no_markers.read_text() == "nothing here\n"


def test_mean_row_counts_failures_and_says_over_how_many_scenes():
    ok = {"scene": "a", "views": 3, "registered": 3, "psnr": 20.0, "ssim": 0.5, "ate": None, "rre_deg": 2.0,
          "rte_deg": 4.0, "auc": {"5": 0.5, "15": 1.0, "30": 1.0}, "seconds": 10.0}
    ok3 = dict(ok, scene="b", ate=0.01, psnr=30.0)
    failed = {"scene": "c", "views": 3, "registered": 0, "auc": {"5": 0.0, "15": 0.0, "30": 0.0},
              "seconds": 1.0, "error": "no reference poses"}
    m = mean_row([ok, ok3, failed])
    assert m["scenes"] == 3 and m["failed"] == 1
    assert m["psnr"] == pytest.approx(25.0) and m["count"]["psnr"] == 2
    assert m["ate"] == pytest.approx(0.01) and m["count"]["ate"] == 1  # ATE n/a for scene a
    assert m["registered"] == pytest.approx(2.0) and m["auc"]["15"] == pytest.approx(2 / 3)
    md = markdown_table([ok, ok3, failed], m)
    assert "| 25.00 (2 of 3) |" in md and "| 0.0100 (1 of 3) |" in md and "| 0.667 |" in md
    assert "| a | 3 | 3 | 20.00 | 0.500 | n/a |" in md


def test_camera_plot_marks_views_that_were_not_placed():
    centers = {"names": ["a.png", "b.png", "c.png"], "reference": [[0, 0, 0], [1, 0, 0], [2, 0, 0.5]],
               "estimated": [[0.1, 0, 0], None, [2, 0.1, 0.5]], "up": [0, 0, 1]}
    svg = camera_plot_svg(centers)
    assert svg.count('class="reference"') == 2 and svg.count('class="estimated"') == 2
    assert "b: not placed" in svg
    # nothing placed, no usable up direction: still a plot of the reference centres
    svg = camera_plot_svg({"reference": [[0, 0, 0], [0, 0, 0]], "estimated": [None, None], "up": None})
    assert svg.startswith("<svg") and svg.count(": not placed</title>") == 2
