"""Screenshot of the results viewer in headless Chromium (how docs/viewer.png is made)::

    python -m viewer.screenshot OUT docs/viewer.png [--width 1200] [--height 720] [--initial] [--points]

OUT is an output folder of ``recon run`` (or a 3DGS .ply). The PNG is palette-quantised to stay small.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

PANEL_WIDTH = 360  # the GUI panel on the right of the page


def screenshot(
    target: str | Path,
    path: str | Path,
    width: int = 1200,
    height: int = 720,
    show_initial: bool = False,
    show_points: bool = False,
    colors: int = 256,
    timeout: float = 90.0,
) -> float:
    """Serve ``target``, load it in headless Chromium, save the page as PNG at ``path``.

    Returns the fraction of the 3D canvas (left of the GUI panel) that the scene covers.

    Raises:
        viewer.browser.BrowserError: no Chromium, or the page did not connect or stayed blank.
    """
    from PIL import Image

    from viewer.app import open_results
    from viewer.browser import BrowserError, HeadlessBrowser, foreground_fraction
    from viewer.server import CANVAS_RGB

    app = open_results(target, port=0, log=None)
    try:
        app.scene.show_initial.value = show_initial and app.results.initial_cameras is not None
        app.scene.show_points.value = show_points and app.results.prior_points is not None
        with HeadlessBrowser(width, height, timeout=timeout) as browser:
            browser.navigate(app.vs.url)
            deadline = time.monotonic() + timeout
            while app.vs.num_clients() == 0:
                if time.monotonic() > deadline:
                    raise BrowserError(f"the page at {app.vs.url} did not connect in {timeout:.0f} s")
                time.sleep(0.2)

            def coverage(px) -> float:
                return foreground_fraction(px[:, : width - PANEL_WIDTH], CANVAS_RGB)

            ok, px = browser.pixels_until(lambda p: coverage(p) > 0.1, timeout=timeout)
            if not ok:
                raise BrowserError("the viewer's canvas stayed blank")
            time.sleep(2.0)  # let the splat sort and the thumbnails settle
            px = browser.pixels()
    finally:
        app.close()
    img = Image.fromarray(px)
    if colors:
        img = img.quantize(colors=colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    img.save(path, optimize=True)
    return coverage(px)


def main() -> None:
    ap = argparse.ArgumentParser(description="Screenshot of `recon view` in headless Chromium.")
    ap.add_argument("target", type=Path, help="output folder of `recon run`, or a 3DGS .ply")
    ap.add_argument("png", type=Path, help="where to write the PNG")
    ap.add_argument("--width", type=int, default=1200)
    ap.add_argument("--height", type=int, default=720)
    ap.add_argument("--initial", action="store_true", help="also show the prior's initial cameras")
    ap.add_argument("--points", action="store_true", help="also show the prior's point cloud")
    args = ap.parse_args()
    frac = screenshot(args.target, args.png, args.width, args.height, args.initial, args.points)
    size = args.png.stat().st_size
    print(f"wrote {args.png} ({size / 1024:.0f} KB); the scene covers {frac:.0%} of the canvas")


if __name__ == "__main__":
    main()
