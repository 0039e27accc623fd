"""Write ``data/sample_scene``: the synthetic demo scene as a small photo set with its true cameras.

8 views at 128 x 96 (JPEG, quality 92, about 60 KB in all) and a NeRF-format ``transforms.json`` with the
scene's exact cameras, so that every entry point can be tried on files:

    recon run data/sample_scene --out outputs/sample                     # pose-free
    recon run data/sample_scene --out outputs/sample_known --poses dataset
    recon eval data/sample_scene --views 4 --out outputs/sample_eval

Deterministic (the scene's seed); ``tests/test_data_sample.py`` checks the shipped files against a fresh
render. Run ``python scripts/make_sample_data.py`` to rewrite them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np

from recon.io.atomic import atomic_write_bytes, atomic_write_json
from recon.io.nerfstudio import transforms_dict
from recon.synthetic import SceneConfig, make_scene

SAMPLE = SceneConfig(n_views=8, width=128, height=96)
JPEG_QUALITY = 92
DEST = Path(__file__).resolve().parents[1] / "data" / "sample_scene"


def write_sample(dest: Path = DEST) -> Path:
    """Write the sample into ``dest``; returns the transforms.json path."""
    scene = make_scene(SAMPLE)
    views = scene.views
    names = [Path(n).stem + ".jpg" for n in views.names]
    for name, img in zip(names, views.images, strict=True):
        rgb = (img.clamp(0, 1) * 255 + 0.5).byte().numpy()
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise RuntimeError(f"could not encode {name}")
        atomic_write_bytes(dest / name, np.asarray(buf).tobytes())
    cams = views.cameras
    cams.names = names
    meta = transforms_dict(cams, names, ply_file_path=None)
    meta["source"] = "recon.synthetic.make_scene(SceneConfig(n_views=8, width=128, height=96)), seed 0"
    path = dest / "transforms.json"
    atomic_write_json(path, meta)
    return path


if __name__ == "__main__":
    print(write_sample(Path(sys.argv[1]) if len(sys.argv) > 1 else DEST))
