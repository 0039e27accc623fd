"""How much the live viewer slows training: ``python -m viewer.bench [--iters N] [--repeats R] [--browser]``.

Trains the same small synthetic scene (oracle-prior initialisation, fixed seed) alternately without a
callback and with :class:`viewer.live.LiveViewer` attached and idle, and prints the median wall times and
their ratio. ``--browser`` also connects a headless Chromium to the viewer and leaves it idle on the page
(note that here the browser shares this machine's CPU with training, which a real user's browser does
not).
"""

from __future__ import annotations

import argparse
import statistics
import time


def _train_once(gaussians, views, iters: int, callback_every: int, callback=None) -> float:
    from recon.optim.trainer import TrainConfig, train

    cfg = TrainConfig(iters=iters, callback_every=callback_every, checkpoint_every=0)
    t0 = time.perf_counter()
    train(gaussians, views.cameras, views.images, cfg, callback=callback, progress=False)
    return time.perf_counter() - t0


def measure(iters: int = 300, repeats: int = 3, width: int = 128, height: int = 96, browser: bool = False,
            callback_every: int = 10) -> dict:
    """Median training seconds without / with the idle live viewer, and their ratio."""
    from recon.gaussians.init import init_from_prior
    from viewer.live import LiveViewer
    from viewer.sample import sample_scene

    scene = sample_scene(n_views=4, width=width, height=height)
    gaussians, _ = init_from_prior(scene.prior_result())
    views = scene.views
    _train_once(gaussians, views, 20, callback_every)  # warm-up: kernels, allocator, imports
    viewer = LiveViewer(port=0, log=None)
    page = None
    try:
        if browser:
            from viewer.browser import HeadlessBrowser

            page = HeadlessBrowser(1000, 700)
            page.start()
            page.navigate(viewer.url)
            deadline = time.monotonic() + 60
            while viewer.vs.num_clients() == 0 and time.monotonic() < deadline:
                time.sleep(0.2)
        off, on = [], []
        for _ in range(repeats):  # interleaved, so that drifting machine load hits both alike
            off.append(_train_once(gaussians, views, iters, callback_every))
            on.append(_train_once(gaussians, views, iters, callback_every, viewer.callback))
    finally:
        if page is not None:
            page.close()
        viewer.close()
    t_off, t_on = statistics.median(off), statistics.median(on)
    return {
        "gaussians": len(gaussians), "iters": iters, "off_s": off, "on_s": on, "median_off_s": t_off,
        "median_on_s": t_on, "ratio": t_on / t_off, "pushes": viewer.pushes, "renders": viewer.scene.renders,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--height", type=int, default=96)
    ap.add_argument("--browser", action="store_true", help="connect a headless Chromium, left idle")
    args = ap.parse_args()
    r = measure(args.iters, args.repeats, args.width, args.height, args.browser)
    print(f"{r['gaussians']} Gaussians, {r['iters']} steps, {args.width}x{args.height}, "
          f"browser={'yes' if args.browser else 'no'}")
    for label, key in (("without viewer", "off"), ("with viewer   ", "on")):
        times = ", ".join(f"{t:.2f}" for t in r[f"{key}_s"])
        print(f"{label}: {times} s (median {r[f'median_{key}_s']:.2f})")
    print(f"slowdown ratio {r['ratio']:.3f} (scene pushes {r['pushes']}, server renders {r['renders']})")


if __name__ == "__main__":
    main()
