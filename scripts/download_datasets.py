"""Download public multi-view datasets that ``recon eval`` / ``recon run`` read, for users with internet.

Never run by the tests, and nothing in recon downloads at run time: this script is the only place that
fetches data, and only when a user runs it. Archives go to ``DEST/archives`` and are unpacked to
``DEST/<name>`` (default ``data/datasets``, ignored by git). See ``data/README.md`` for the layouts.

    python scripts/download_datasets.py --list
    python scripts/download_datasets.py middlebury_templeSparseRing
    python scripts/download_datasets.py dtu_monosdf --dest /big/disk

Datasets hosted behind a web form or on Google Drive are listed with where to get them by hand.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tarfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Dataset:
    name: str
    what: str
    size: str
    url: str | None  # a direct archive URL, or None: manual download (see ``manual``)
    manual: str = ""


DATASETS = [
    Dataset(
        "middlebury_templeSparseRing", "Middlebury MVS temple, 16 views 640x480, calibrated (*_par.txt)",
        "4 MB", "https://vision.middlebury.edu/mview/data/data/templeSparseRing.zip",
    ),
    Dataset(
        "dtu_monosdf", "DTU scans in the MonoSDF preprocessing (384x384, cameras.npz), 15 scans",
        "several GB", "https://s3.eu-central-1.amazonaws.com/avg-projects/monosdf/data/DTU.tar",
    ),
    Dataset(
        "mipnerf360", "Mip-NeRF 360 scenes (COLMAP sparse/0 + poses_bounds.npy)", "about 12 GB",
        "http://storage.googleapis.com/gresearch/refraw360/360_v2.zip",
    ),
    Dataset(
        "nerf_llff_data", "LLFF forward-facing scenes (poses_bounds.npy, images_8)", "about 1.8 GB", None,
        "nerf_llff_data.zip from the NeRF authors' Google Drive folder "
        "https://drive.google.com/drive/folders/128yBriW1IG_3NJ5Rp7APSTZsJqdJdfc1 (e.g. with `gdown`); "
        "unzip it into DEST",
    ),
    Dataset(
        "nerf_synthetic", "NeRF Blender scenes (transforms_{train,val,test}.json)", "about 0.4 GB", None,
        "nerf_synthetic.zip from the same Google Drive folder as nerf_llff_data; unzip it into DEST",
    ),
    Dataset(
        "strecha", "Strecha et al. 2008 (fountain-P11, Herz-Jesu-P8; images/ + gt_dense_cameras/)",
        "tens of MB", None,
        "the 'dense multi-view stereo' ground-truth data of Strecha et al., CVPR 2008 (EPFL CVLab); put each "
        "scene's images in DEST/<scene>/images and its .camera files in DEST/<scene>/gt_dense_cameras",
    ),
]


def _fetch(url: str, path: Path) -> None:
    """Download ``url`` to ``path`` (via a .part file, so an interrupted download is never taken as done)."""
    part = path.with_name(path.name + ".part")
    print(f"downloading {url}")
    with urllib.request.urlopen(url) as r, open(part, "wb") as f:  # noqa: S310 - fixed https/http URLs
        total = int(r.headers.get("Content-Length") or 0)
        done = 0
        while chunk := r.read(1 << 20):
            f.write(chunk)
            done += len(chunk)
            if total:
                print(f"\r  {done / 2**20:8.1f} / {total / 2**20:.1f} MiB", end="", flush=True)
    print()
    part.replace(path)


def _unpack(archive: Path, dest: Path) -> None:
    print(f"unpacking {archive.name} into {dest}")
    dest.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            z.extractall(dest)
    else:
        with tarfile.open(archive) as t:
            t.extractall(dest, filter="data")


def download(ds: Dataset, dest: Path, keep_archive: bool) -> None:
    if ds.url is None:
        print(f"{ds.name}: manual download: {ds.manual}")
        return
    target = dest / ds.name
    if target.exists():
        print(f"{ds.name}: already in {target}")
        return
    archives = dest / "archives"
    archives.mkdir(parents=True, exist_ok=True)
    archive = archives / ds.url.rsplit("/", 1)[-1]
    if not archive.exists():
        _fetch(ds.url, archive)
    _unpack(archive, target)
    if not keep_archive:
        archive.unlink()
    print(f"{ds.name}: done -> {target}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", help="datasets to fetch (see --list)")
    ap.add_argument("--dest", type=Path, default=REPO / "data" / "datasets", help="where datasets go")
    ap.add_argument("--list", action="store_true", help="list the datasets and exit")
    ap.add_argument("--keep-archives", action="store_true", help="keep the downloaded archives")
    args = ap.parse_args(argv)
    by_name = {d.name: d for d in DATASETS}
    if args.list or not args.names:
        for d in DATASETS:
            how = d.url or "manual download"
            print(f"{d.name:30s} {d.size:>14s}  {d.what}\n{'':30s} {'':>14s}  {how}")
        return 0
    unknown = [n for n in args.names if n not in by_name]
    if unknown:
        print(f"unknown dataset(s): {', '.join(unknown)}; see --list", file=sys.stderr)
        return 2
    probe = args.dest
    while not probe.exists():
        probe = probe.parent
    if shutil.disk_usage(probe).free < 2**30:
        print("warning: less than 1 GiB free at the destination", file=sys.stderr)
    for n in args.names:
        download(by_name[n], args.dest, args.keep_archives)
    return 0


if __name__ == "__main__":
    sys.exit(main())
