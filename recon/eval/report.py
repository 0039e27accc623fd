"""Summaries of ``recon eval`` results: the mean row, the markdown tables (``results.md``, the README's
table) and ``report.html``, a self-contained visual report.

Everything here reads result rows (the dicts :func:`recon.eval.runner.evaluate_scene` returns, as stored
in ``OUT/<scene>/result.json``) and the files in the scene folders, so a report can be rebuilt from disk at
any time (numpy and Pillow; no torch of its own).

Means are over every scene: failed scenes count as registered 0 and AUC 0; a column that a scene has no
value for (PSNR of a failed scene, ATE with fewer than 3 registered views) is averaged over the k scenes
that have one and shown as "(k of n)" beside the mean, never silently over fewer scenes.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recon.io.atomic import atomic_write_text

AUC_KEYS = ("5", "15", "30")
MEAN_KEYS = ("registered", "psnr", "ssim", "ate", "rre_deg", "rte_deg", "seconds")
"""Row values averaged by :func:`mean_row` (besides the AUCs)."""
HEAT_MAX = 0.25
"""Per-pixel error (mean absolute difference over RGB, images in [0, 1]) at the top of the heat map scale."""
HEAT_STOPS = ((0.0, (0, 0, 4)), (0.25, (87, 16, 110)), (0.5, (188, 55, 84)), (0.75, (249, 142, 9)),
              (1.0, (252, 255, 164)))
"""Colour map of the error heat maps (position in [0, 1], RGB), an inferno-like ramp."""
THUMB_WIDTH = 320
"""Width in pixels of the images in report.html."""


# --------------------------------------------------------------------------------------------------
# Means and tables
# --------------------------------------------------------------------------------------------------


def _number(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def mean_row(rows: list[dict]) -> dict:
    """Means over all ``rows``: ``{key: mean or None, "auc": {t: mean}, "count": {key: k}, "scenes": n,
    "failed": number of rows with an error}``.

    Failed rows carry registered 0 and AUC 0 (or the pose metrics they reached), so those means are over
    all n scenes; other columns are averaged over the ``count[key]`` rows that have a finite value.
    """
    mean: dict = {"scenes": len(rows), "failed": sum(1 for r in rows if r.get("error")), "count": {}}
    for k in MEAN_KEYS:
        vals = [v for v in (_number(r.get(k)) for r in rows) if v is not None]
        mean[k] = sum(vals) / len(vals) if vals else None
        mean["count"][k] = len(vals)
    mean["auc"] = {
        t: sum(_number((r.get("auc") or {}).get(t)) or 0.0 for r in rows) / len(rows) if rows else None
        for t in AUC_KEYS
    }
    mean["count"]["auc"] = len(rows)
    return mean


@dataclass(frozen=True)
class Column:
    """One column of a results table: ``key`` is a row key ("auc.15" for a nested one)."""

    header: str
    key: str
    digits: int = 2
    fmt: Callable[[dict], str] | None = None
    """Formats a scene row's cell (not the mean row's) instead of the plain number."""


def _get(row: dict, key: str):
    v = row
    for part in key.split("."):
        v = v.get(part) if isinstance(v, dict) else None
    return v


def _fmt(v, digits: int = 2) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _registered_of_views(row: dict) -> str:
    return f"{_fmt(row.get('registered'))}/{_fmt(row.get('views'))}"


def row_note(row: dict) -> str:
    """The error of a failed scene, or the views the prior could not place with their reasons."""
    if row.get("error"):
        return str(row["error"])
    return "; ".join(f"{k}: {v}" for k, v in (row.get("failed") or {}).items())


RESULTS_COLUMNS = (
    Column("views", "views"),
    Column("registered", "registered"),
    Column("PSNR", "psnr"),
    Column("SSIM", "ssim", 3),
    Column("ATE (frac)", "ate", 4),
    Column("RRE (deg)", "rre_deg"),
    Column("RTE (deg)", "rte_deg"),
    Column("AUC@5", "auc.5", 3),
    Column("AUC@15", "auc.15", 3),
    Column("AUC@30", "auc.30", 3),
    Column("s", "seconds", 0),
)
"""Columns of ``results.md`` (besides scene and note)."""

README_COLUMNS = (
    Column("registered", "registered", fmt=_registered_of_views),
    Column("PSNR", "psnr"),
    Column("SSIM", "ssim", 3),
    Column("ATE (frac)", "ate", 4),
    Column("RRE (deg)", "rre_deg"),
    Column("RTE (deg)", "rte_deg"),
    Column("AUC@15", "auc.15", 3),
    Column("s", "seconds", 0),
)
"""Columns of the README's results table (``scripts/results_to_readme.py``)."""

MEAN_NOTE = ("Means are over all scenes; failed scenes count as registered 0 and AUC 0. A mean marked "
             "(k of n) is over the k scenes that have the value (a failed scene has no PSNR; ATE needs 3 "
             "registered views).")


def _mean_cells(mean: dict, columns: tuple[Column, ...]) -> list[str]:
    n = mean.get("scenes", 0)
    cells = []
    for c in columns:
        base = c.key.split(".")[0]
        if base == "views":
            cells.append("")
            continue
        k = (mean.get("count") or {}).get(base, n)
        cell = _fmt(_get(mean, c.key), c.digits)
        cells.append(cell if k == n or cell == "n/a" else f"{cell} ({k} of {n})")
    return cells


def table_cells(rows: list[dict], mean: dict, columns: tuple[Column, ...]) -> list[list[str]]:
    """Cells of a results table: one list per scene row (scene, columns..., note), then the mean row."""
    out = []
    for r in rows:
        cells = [c.fmt(r) if c.fmt else _fmt(_get(r, c.key), c.digits) for c in columns]
        out.append([str(r.get("scene", "?")), *cells, row_note(r)])
    failed = mean.get("failed", 0)
    label = f"mean ({mean.get('scenes', 0)} scenes" + (f", {failed} failed)" if failed else ")")
    out.append([label, *_mean_cells(mean, columns), ""])
    return out


def _md_escape(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def markdown_table(rows: list[dict], mean: dict, columns: tuple[Column, ...] = RESULTS_COLUMNS) -> str:
    """A markdown table of ``rows`` with the mean row last (bold), followed by :data:`MEAN_NOTE`."""
    header = ["scene", *(c.header for c in columns), "note"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    cells = table_cells(rows, mean, columns)
    for k, row in enumerate(cells):
        if k == len(cells) - 1:
            row = [f"**{row[0]}**", *row[1:]]
        lines.append("| " + " | ".join(_md_escape(c) for c in row) + " |")
    return "\n".join(lines) + "\n\n" + MEAN_NOTE + "\n"


def results_markdown(rows: list[dict], mean: dict) -> str:
    """``results.md``: the results table and, when any scene has one, the refinement-effect table."""
    lines = [markdown_table(rows, mean).rstrip("\n")]
    effect_rows = [r for r in rows if r.get("refine_effect")]
    if effect_rows:
        lines += [
            "",
            "Refinement stages, each with and without (the scene before the stage):",
            "",
            "| scene | stage | PSNR without | PSNR with | dPSNR | RRE without | RRE with | note |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in effect_rows:
            for stage, e in r["refine_effect"].items():
                if "skipped" in e:
                    lines.append(f"| {r['scene']} | {stage} | | | | | | skipped: {e['skipped']} |")
                    continue
                wo, w = e["without"], e["with"]
                note = "" if e["changed"] else "changed nothing"
                lines.append(
                    f"| {r['scene']} | {stage} | {_fmt(wo['psnr'])} | {_fmt(w['psnr'])} "
                    f"| {_fmt(e['delta'].get('psnr'))} | {_fmt(wo['rre_deg'])} | {_fmt(w['rre_deg'])} "
                    f"| {note} |"
                )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------
# report.html
# --------------------------------------------------------------------------------------------------


def heat_colors(err: np.ndarray, vmax: float = HEAT_MAX) -> np.ndarray:
    """(H, W, 3) uint8 colours of per-pixel errors ``err`` (H, W) on the :data:`HEAT_STOPS` ramp, 0..vmax."""
    x = np.clip(err / vmax, 0.0, 1.0)
    pos = np.array([p for p, _ in HEAT_STOPS])
    rgb = np.array([c for _, c in HEAT_STOPS], dtype=np.float64)
    return np.stack([np.interp(x, pos, rgb[:, k]) for k in range(3)], axis=-1).round().astype(np.uint8)


def _data_uri(pixels: np.ndarray, width: int = THUMB_WIDTH) -> str:
    """A JPEG data URI of (H, W, 3) uint8 ``pixels`` scaled to ``width`` (never up)."""
    from PIL import Image

    img = Image.fromarray(pixels)
    if img.width > width:
        img = img.resize((width, max(1, round(img.height * width / img.width))), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=88)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def held_out_images(render_and_photo: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(render, photo, heat map), each (H, W, 3) uint8, of a held-out view's PNG as ``recon eval`` writes
    it (render | photo side by side, ``OUT/<scene>/renders/test/<name>.png``)."""
    from PIL import Image

    both = np.asarray(Image.open(render_and_photo).convert("RGB"))
    w = both.shape[1] // 2
    render, photo = both[:, :w], both[:, w : 2 * w]
    err = np.abs(render.astype(np.float64) - photo.astype(np.float64)).mean(-1) / 255.0
    return render, photo, heat_colors(err)


def _top_view_basis(ref: np.ndarray, up: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Two orthonormal plot axes (e1, e2) of the plane orthogonal to ``up``, e1 along the reference centres'
    main spread, e1 x e2 = up (so the plot is seen from above). Without a usable ``up``, the plane of the
    centres' two main directions."""
    centred = ref - ref.mean(0)
    _, _, vt = np.linalg.svd(centred if len(ref) > 1 else np.eye(3), full_matrices=True)
    if up is None or not np.all(np.isfinite(up)) or np.linalg.norm(up) < 1e-9:
        up = vt[2]
    up = up / np.linalg.norm(up)
    e1 = vt[0] - up * (vt[0] @ up)
    if np.linalg.norm(e1) < 1e-9:  # the main spread is along up: any horizontal axis
        e1 = np.cross(up, [1.0, 0.0, 0.0] if abs(up[0]) < 0.9 else [0.0, 1.0, 0.0])
    e1 = e1 / np.linalg.norm(e1)
    return e1, np.cross(up, e1)


def camera_plot_svg(centers: dict, size: int = 360) -> str:
    """Inline SVG: the reference camera centres (hollow blue) and the estimated ones after the similarity
    alignment (orange), seen from above, each estimate joined to its reference; views the method did not
    place are red crosses.

    ``centers``: {"names": [N], "reference": (N, 3), "estimated": N entries of (3,) or None, "up": (3,)
    world up (the reference cameras' mean -y axis) or None}.
    """
    ref = np.asarray(centers["reference"], dtype=np.float64).reshape(-1, 3)
    est = [None if e is None else np.asarray(e, dtype=np.float64) for e in centers.get("estimated") or []]
    est += [None] * (len(ref) - len(est))
    up = centers.get("up")
    e1, e2 = _top_view_basis(ref, None if up is None else np.asarray(up, dtype=np.float64))
    pts = np.concatenate([ref] + [e[None] for e in est if e is not None])
    xy = np.stack([pts @ e1, pts @ e2], axis=1)
    lo, hi = xy.min(0), xy.max(0)
    span = max(float((hi - lo).max()), 1e-9)
    pad = 28

    def to_svg(p: np.ndarray) -> tuple[float, float]:
        x = float(p @ e1 - (lo[0] + hi[0]) / 2) / span
        y = float(p @ e2 - (lo[1] + hi[1]) / 2) / span
        return size / 2 + x * (size - 2 * pad), size / 2 - y * (size - 2 * pad)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{size}" height="{size + 22}" '
             f'viewBox="0 0 {size} {size + 22}" class="cameras">',
             f'<rect width="{size}" height="{size}" fill="#fafafa" stroke="#ccc"/>']
    names = centers.get("names") or [str(i) for i in range(len(ref))]
    for i, (r, e) in enumerate(zip(ref, est, strict=True)):
        rx, ry = to_svg(r)
        label = html.escape(Path(str(names[i])).stem)
        if e is None:
            parts.append(f'<path d="M{rx - 5:.1f},{ry - 5:.1f}L{rx + 5:.1f},{ry + 5:.1f}M{rx - 5:.1f},'
                         f'{ry + 5:.1f}L{rx + 5:.1f},{ry - 5:.1f}" stroke="#d62728" stroke-width="2">'
                         f'<title>{label}: not placed</title></path>')
        else:
            ex, ey = to_svg(e)
            parts.append(f'<line x1="{rx:.1f}" y1="{ry:.1f}" x2="{ex:.1f}" y2="{ey:.1f}" stroke="#888"/>')
            parts.append(f'<circle class="estimated" cx="{ex:.1f}" cy="{ey:.1f}" r="3.5" fill="#ff7f0e">'
                         f'<title>{label} (estimated)</title></circle>')
            parts.append(f'<circle class="reference" cx="{rx:.1f}" cy="{ry:.1f}" r="6" fill="none" '
                         f'stroke="#1f77b4" stroke-width="1.5"><title>{label} (reference)</title></circle>')
        right = rx > size / 2  # labels point inwards so they stay inside the plot
        parts.append(f'<text x="{rx + (-8 if right else 8):.1f}" y="{ry - 8:.1f}" font-size="10" fill="#333" '
                     f'text-anchor="{"end" if right else "start"}">{label}</text>')
    parts.append(f'<text x="4" y="{size + 15}" font-size="11" fill="#333">'
                 '<tspan fill="#1f77b4">&#9711; reference</tspan>  <tspan fill="#ff7f0e">&#9679; estimated '
                 '(aligned)</tspan>  <tspan fill="#d62728">&#10005; not placed</tspan></text>')
    parts.append("</svg>")
    return "".join(parts)


_CSS = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th:first-child, td:first-child, td.note { text-align: left; }
tr.mean td { font-weight: bold; background: #f4f4f4; }
.error { color: #b00020; font-weight: bold; }
.views { display: flex; flex-wrap: wrap; gap: 18px; }
figure { margin: 0; }
figure img { display: block; width: 240px; height: auto; }
.triple { display: flex; gap: 4px; }
figcaption { font-size: 12px; margin-top: 2px; }
.legend { display: inline-block; width: 160px; height: 10px; vertical-align: middle; }
section { border-top: 2px solid #ddd; margin-top: 28px; }
.bar { background: #4c78a8; height: 10px; display: inline-block; }
"""


def _html_table(rows: list[dict], mean: dict | None, columns: tuple[Column, ...]) -> str:
    header = ["scene", *(c.header for c in columns), "note"]
    cells = table_cells(rows, mean if mean is not None else mean_row(rows), columns)
    if mean is None:
        cells = cells[:-1]
    out = ["<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"]
    for k, row in enumerate(cells):
        cls = ' class="mean"' if mean is not None and k == len(cells) - 1 else ""
        tds = [f"<td>{html.escape(c)}</td>" for c in row[:-1]]
        tds.append(f'<td class="note">{html.escape(row[-1])}</td>')
        out.append(f"<tr{cls}>" + "".join(tds) + "</tr>")
    return "".join(out) + "</table>"


def stage_seconds(timing) -> float | None:
    """Wall seconds of one stage timing: a number, or a stage log entry {"wall_s", "cpu_s", "peak_mib"}."""
    return _number(timing.get("wall_s") if isinstance(timing, dict) else timing)


def _timings_html(timings: dict) -> str:
    stages = {k: (stage_seconds(v), v if isinstance(v, dict) else {}) for k, v in timings.items()}
    stages = {k: v for k, v in stages.items() if v[0] is not None}
    if not stages:
        return "<p>no stage timings recorded</p>"
    top = max(wall for wall, _ in stages.values()) or 1.0
    rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{wall:.1f}</td><td>{_fmt(_number(e.get('cpu_s')), 1)}</td>"
        f"<td>{_fmt(_number(e.get('peak_mib')), 0)}</td><td style=\"text-align:left\">"
        f'<span class="bar" style="width:{200 * wall / top:.0f}px"></span></td></tr>'
        for k, (wall, e) in stages.items()
    )
    return (f'<table class="timings"><tr><th>stage</th><th>wall s</th><th>CPU s</th><th>peak MiB</th>'
            f"<th></th></tr>{rows}</table>")


def _scene_html(row: dict, out: Path) -> str:
    name = str(row.get("scene", "?"))
    parts = [f'<section id="scene-{html.escape(name)}"><h2>{html.escape(name)}</h2>',
             _html_table([row], None, RESULTS_COLUMNS)]
    if row.get("error"):
        parts.append(f'<p class="error">failed: {html.escape(str(row["error"]))}</p>')
    tests = row.get("test") or []
    figures = []
    per_view = row.get("per_view") or {}
    for view in tests:
        png = out / name / "renders" / "test" / (Path(view).stem + ".png")
        if not png.is_file():
            continue
        render, photo, heat = held_out_images(png)
        scores = per_view.get(view) or {}
        caption = html.escape(view) + "".join(
            f", {k.upper()} {_fmt(_number(scores.get(k)), d)}" for k, d in (("psnr", 2), ("ssim", 3))
            if k in scores)
        imgs = "".join(f'<img src="{_data_uri(px)}" alt="{html.escape(view)} {kind}" title="{kind}">'
                       for kind, px in (("render", render), ("photo", photo), ("error", heat)))
        figures.append(f'<figure><div class="triple">{imgs}</div><figcaption>{caption}</figcaption></figure>')
    if figures:
        stops = ", ".join(f"rgb{c} {100 * p:.0f}%" for p, c in HEAT_STOPS)
        parts.append(f'<h3>Held-out views: render, photo, error</h3><p>error: mean absolute RGB difference '
                     f'<span class="legend" style="background: linear-gradient(to right, {stops})"></span> '
                     f'0 to {HEAT_MAX} and above</p><div class="views">{"".join(figures)}</div>')
    elif tests:
        parts.append("<p>no held-out renders were written</p>")
    if row.get("centers"):
        parts.append("<h3>Camera centres, top view (estimated aligned to reference by a similarity)</h3>")
        parts.append(camera_plot_svg(row["centers"]))
    parts.append("<h3>Stage timings</h3>" + _timings_html(row.get("timings") or {}))
    parts.append("</section>")
    return "".join(parts)


def report_html(rows: list[dict], mean: dict, out: Path, title: str = "recon eval") -> str:
    """The report page: the summary table on top, then per scene its metrics row, each held-out view's
    render, photo and error heat map, a top view of the camera centres and the stage timings. Images are
    embedded (base64 JPEG); renders are read from ``out/<scene>/renders/test``."""
    body = [f"<h1>{html.escape(title)}</h1>", _html_table(rows, mean, RESULTS_COLUMNS),
            f"<p>{html.escape(MEAN_NOTE)}</p>"]
    body += [_scene_html(r, Path(out)) for r in rows]
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_CSS}</style></head><body>{''.join(body)}</body></html>\n")


def write_report_html(rows: list[dict], mean: dict, out: Path) -> Path:
    """Write :func:`report_html` to ``out/report.html`` atomically; returns its path."""
    path = Path(out) / "report.html"
    atomic_write_text(path, report_html(rows, mean, out))
    return path
