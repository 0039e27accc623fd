"""Native CPU backend of the rasteriser: C++ kernels in ``kernels/`` built just in time.

The two stages have exactly the contract of :mod:`recon.render.torch_ref` (which stays the readable
reference; read it for the maths):

* :func:`project_gaussians` (means, quats, scales, w2c, K, ...) -> (means2d, conics, depths, radii),
  differentiable w.r.t. means, quats, scales and w2c (so camera poses can be optimised);
* :func:`rasterize_to_pixels` (means2d, conics, opacities, colors, depths, radii, ...) -> (colors, alphas,
  accum_depth), differentiable w.r.t. means2d, conics, opacities, colors and depths.

Both are ``torch.autograd.Function`` s whose forward and backward run hand-written C++ (OpenMP over
Gaussians / tiles).  The kernels work in float32; other floating inputs are cast and the gradients cast
back.  K receives no gradient.

Building: the first :func:`available` call compiles ``kernels/*.cpp`` with ``torch.utils.cpp_extension``
(ninja from PyPI, the system C++ compiler) into ``$RECON_CACHE_DIR/kernels/<key>`` (default
``~/.cache/recon/kernels/<key>``), the key hashing the sources, the compiler flags and the torch/Python
versions; later processes load the cached library directly, without ninja or a compiler.  Installing recon
therefore never needs a compiler; when none is available the build fails once, a single warning is
issued, :func:`available` returns False and callers use the pure-PyTorch backend.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import platform
import sys
import threading
import time
import warnings
from pathlib import Path
from types import ModuleType

import torch

Tensor = torch.Tensor

#: The C++ sources (and the header they share) that make up the extension.
def _kernel_dir() -> Path:
    """The C++ sources: ``kernels/`` beside the package in a source checkout (editable install), else
    the copy a wheel installs under ``<prefix>/share/recon/kernels`` (pyproject data-files)."""
    source_tree = Path(__file__).resolve().parents[2] / "kernels"
    if source_tree.is_dir():
        return source_tree
    return Path(sys.prefix) / "share" / "recon" / "kernels"


KERNEL_DIR = _kernel_dir()
_SOURCES = ("bindings.cpp", "projection.cpp", "rasterize.cpp")
_HEADERS = ("raster.h",)

#: Default tile edge (pixels).  It changes speed only, never the image; 32 beats 16 here because a
#: Gaussian is walked over its own visibility box, so bigger tiles mostly mean fewer tile-list entries.
DEFAULT_TILE_SIZE = 32

_lock = threading.Lock()
_module: ModuleType | None = None
_failed: str | None = None


def cache_dir() -> Path:
    """Folder holding the compiled kernels (one sub-folder per build key)."""
    root = os.environ.get("RECON_CACHE_DIR")
    base = Path(root) if root else Path.home() / ".cache" / "recon"
    return base / "kernels"


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _compile_flags() -> list[str]:
    """-O3 and OpenMP; AVX2/FMA, and AVX-512 (F/VL/BW/DQ, used at 256-bit width for its mask registers),
    only when this CPU has them (the cache is per machine and the key includes the flags).  No
    -march=native and no -ffast-math: results must follow the reference's float rules.
    -fno-trapping-math / -fno-math-errno change no value; they let the compiler if-convert (and so
    vectorise) the branch-free inner loops."""
    flags = ["-O3", "-std=c++17", "-fopenmp", "-fno-trapping-math", "-fno-math-errno"]
    cpu = _cpu_flags() if platform.machine() in ("x86_64", "AMD64") else set()
    if {"avx2", "fma"} <= cpu:
        flags += ["-mavx2", "-mfma"]
        if {"avx512f", "avx512vl", "avx512bw", "avx512dq"} <= cpu:
            flags += ["-mavx512f", "-mavx512vl", "-mavx512bw", "-mavx512dq", "-mprefer-vector-width=256"]
    return flags


def _build_key(flags: list[str]) -> str:
    h = hashlib.sha256()
    for name in _SOURCES + _HEADERS:
        h.update(name.encode())
        h.update((KERNEL_DIR / name).read_bytes())
    h.update(" ".join(flags).encode())
    h.update(torch.__version__.encode())
    h.update(sys.version.encode())
    h.update(platform.machine().encode())
    return h.hexdigest()[:16]


def _load_built(name: str, build_dir: Path) -> ModuleType | None:
    """Import an already compiled extension straight from the cache (no ninja, no compiler)."""
    so = build_dir / f"{name}.so"
    if not so.is_file() or (build_dir / "lock").exists():  # torch's build lock: another process is linking
        return None
    spec = importlib.util.spec_from_file_location(name, so)
    if spec is None or spec.loader is None:
        return None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


STALE_LOCK_SECONDS = 600.0


def _remove_stale_lock(lock: Path) -> None:
    """torch's build lock is a plain file that another process waits on forever; one left behind by a
    build that was killed would hang every later process. No build takes 10 minutes, so an older lock is
    stale."""
    try:
        if time.time() - lock.stat().st_mtime > STALE_LOCK_SECONDS:
            lock.unlink()
            print(f"recon: removed a stale kernel build lock ({lock})", file=sys.stderr)
    except FileNotFoundError:
        pass


def _build() -> ModuleType:
    from torch.utils import cpp_extension

    missing = [n for n in _SOURCES + _HEADERS if not (KERNEL_DIR / n).is_file()]
    if missing:
        raise FileNotFoundError(f"kernel sources missing from {KERNEL_DIR}: {', '.join(missing)}")
    flags = _compile_flags()
    key = _build_key(flags)
    name = f"recon_raster_{key}"
    build_dir = cache_dir() / key
    mod = _load_built(name, build_dir)
    if mod is not None:
        return mod
    build_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_lock(build_dir / "lock")
    print("recon: compiling CPU rasteriser kernels (first run only, ~1 min)...", file=sys.stderr, flush=True)
    # ninja comes from PyPI: make sure its script folder (and the interpreter's) is on PATH for torch.
    path_dirs = [os.path.dirname(sys.executable)]
    try:
        import ninja

        path_dirs.insert(0, ninja.BIN_DIR)
    except (ImportError, AttributeError):
        pass
    old_path = os.environ.get("PATH", "")
    os.environ["PATH"] = os.pathsep.join(path_dirs + [old_path])
    try:
        return cpp_extension.load(
            name=name,
            sources=[str(KERNEL_DIR / s) for s in _SOURCES],
            extra_cflags=flags,
            extra_ldflags=["-fopenmp"],
            build_directory=str(build_dir),
            verbose=False,
        )
    finally:
        os.environ["PATH"] = old_path


def available() -> bool:
    """True when the native kernels are usable; builds them on the first call (then cached on disk).

    On failure (no compiler, no ninja, missing sources) warns once and returns False from then on.
    """
    global _module, _failed
    if _module is not None:
        return True
    if _failed is not None:
        return False
    with _lock:
        if _module is None and _failed is None:
            try:
                _module = _build()
            except Exception as e:  # any build/load failure means "use the PyTorch backend"
                _failed = f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"
                warnings.warn(
                    f"recon: native CPU rasteriser unavailable ({_failed}); using the slower pure-PyTorch "
                    "backend. Install a C++ compiler (e.g. g++) to enable it.",
                    RuntimeWarning,
                    stacklevel=2,
                )
    return _module is not None


def _ext() -> ModuleType:
    if not available():
        raise RuntimeError(f"recon native kernels are unavailable: {_failed}")
    assert _module is not None
    return _module


def _f32(t: Tensor) -> Tensor:
    return t.detach().to(torch.float32).contiguous()


def _grad_or_zeros(g: Tensor | None, like: Tensor) -> Tensor:
    return torch.zeros_like(like) if g is None else _f32(g)


# --------------------------------------------------------------------------------------------------
# Stage 1
# --------------------------------------------------------------------------------------------------


class _ProjectGaussians(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means, quats, scales, w2c, K, width, height, eps2d, near_plane, far_plane):
        args = (_f32(means), _f32(quats), _f32(scales), _f32(w2c), _f32(K))
        cfg = (int(width), int(height), float(eps2d), float(near_plane), float(far_plane))
        means2d, conics, depths, radii = _ext().project_forward(*args, *cfg, torch.get_num_threads())
        ctx.save_for_backward(*args)
        ctx.cfg = cfg
        ctx.dtypes = (means.dtype, quats.dtype, scales.dtype, w2c.dtype)
        ctx.mark_non_differentiable(radii)
        dt = means.dtype
        return means2d.to(dt), conics.to(dt), depths.to(dt), radii

    @staticmethod
    def backward(ctx, v_means2d, v_conics, v_depths, _v_radii):
        means, quats, scales, w2c, K = ctx.saved_tensors
        C, N = w2c.shape[0], means.shape[0]
        like2 = means.new_zeros(C, N, 2)
        g_means, g_quats, g_scales, g_w2c = _ext().project_backward(
            means, quats, scales, w2c, K, *ctx.cfg,
            _grad_or_zeros(v_means2d, like2),
            _grad_or_zeros(v_conics, means.new_zeros(C, N, 3)),
            _grad_or_zeros(v_depths, means.new_zeros(C, N)),
            torch.get_num_threads(),
        )  # fmt: skip
        dm, dq, ds, dw = ctx.dtypes
        return (
            g_means.to(dm),
            g_quats.to(dq),
            g_scales.to(ds),
            g_w2c.to(dw),
            None,
            None,
            None,
            None,
            None,
            None,
        )


def project_gaussians(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    w2c: Tensor,
    K: Tensor,
    width: int,
    height: int,
    eps2d: float = 0.3,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Native :func:`recon.render.torch_ref.project_gaussians` (same arguments, shapes and semantics).

    Args:
        means (N, 3), quats (N, 4) wxyz (normalised inside), scales (N, 3) activated, w2c (C, 4, 4),
        K (C, 3, 3), image width/height, eps2d blur, near/far planes.

    Returns:
        means2d (C, N, 2), conics (C, N, 3), depths (C, N), radii (C, N, 2) int32 (0 = culled).
    """
    N, C = means.shape[0], w2c.shape[0]
    expect = {"means": (means, (N, 3)), "quats": (quats, (N, 4)), "scales": (scales, (N, 3)),
              "w2c": (w2c, (C, 4, 4)), "K": (K, (C, 3, 3))}  # fmt: skip
    for name, (t, shape) in expect.items():
        if tuple(t.shape) != shape:
            raise ValueError(f"project_gaussians: {name} has shape {tuple(t.shape)}, want {shape}")
        if t.device.type != "cpu":
            raise ValueError(f"project_gaussians (native CPU backend): {name} is on {t.device}")
    return _ProjectGaussians.apply(means, quats, scales, w2c, K, width, height, eps2d, near_plane, far_plane)


# --------------------------------------------------------------------------------------------------
# Stage 2
# --------------------------------------------------------------------------------------------------


class _RasterizeToPixels(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means2d, conics, opacities, colors, depths, radii, width, height, tile_size):
        args = (_f32(means2d), _f32(conics), _f32(opacities), _f32(colors), _f32(depths))
        radii = radii.detach().to(torch.int32).contiguous()
        cfg = (int(width), int(height), int(tile_size))
        out_c, out_a, out_z, last, offsets, ids, records = _ext().rasterize_forward(
            *args, radii, *cfg, torch.get_num_threads()
        )
        # The backward pass needs the packed Gaussians, the tile lists, the per-pixel stopping point and the
        # outputs themselves.
        ctx.save_for_backward(*args, records, out_c, out_a, out_z, last, offsets, ids)
        ctx.cfg = cfg
        ctx.dtypes = tuple(t.dtype for t in (means2d, conics, opacities, colors, depths))
        dt = colors.dtype
        return out_c.to(dt), out_a.to(dt), out_z.to(dt)

    @staticmethod
    def backward(ctx, v_colors, v_alphas, v_depths):
        means2d, conics, opacities, colors, depths, records, out_c, out_a, out_z, last, offsets, ids = (
            ctx.saved_tensors
        )
        width, height, tile_size = ctx.cfg
        grads = _ext().rasterize_backward(
            means2d, conics, opacities, colors, depths, width, height, tile_size, records, offsets, ids,
            out_c, out_a, out_z, last,
            _grad_or_zeros(v_colors, out_c), _grad_or_zeros(v_alphas, out_a), _grad_or_zeros(v_depths, out_z),
            torch.get_num_threads(),
        )  # fmt: skip
        g = tuple(x.to(dt) for x, dt in zip(grads, ctx.dtypes, strict=True))
        return (*g, None, None, None, None)


def rasterize_to_pixels(
    means2d: Tensor,
    conics: Tensor,
    opacities: Tensor,
    colors: Tensor,
    depths: Tensor,
    radii: Tensor,
    width: int,
    height: int,
    tile_size: int = DEFAULT_TILE_SIZE,
) -> tuple[Tensor, Tensor, Tensor]:
    """Native :func:`recon.render.torch_ref.rasterize_to_pixels` (same arguments, shapes and semantics).

    Args:
        means2d (C, N, 2), conics (C, N, 3), opacities (N,) or (C, N), colors (C, N, D) or (N, D),
        depths (C, N), radii (C, N, 2) int (0 = culled), image width/height, tile_size.

    Returns:
        render_colors (C, H, W, D) ``sum w_i c_i``, render_alphas (C, H, W, 1) ``sum w_i``,
        accum_depth (C, H, W, 1) ``sum w_i z_i``.
    """
    C, N = depths.shape
    D = colors.shape[-1]
    ok = (
        means2d.shape == (C, N, 2)
        and conics.shape == (C, N, 3)
        and opacities.shape in ((N,), (C, N))
        and colors.shape in ((N, D), (C, N, D))
        and radii.shape == (C, N, 2)
    )
    if not ok:
        raise ValueError(
            f"rasterize_to_pixels: inconsistent shapes means2d {tuple(means2d.shape)}, conics "
            f"{tuple(conics.shape)}, opacities {tuple(opacities.shape)}, colors {tuple(colors.shape)}, "
            f"depths {tuple(depths.shape)}, radii {tuple(radii.shape)}"
        )
    if any(t.device.type != "cpu" for t in (means2d, conics, opacities, colors, depths, radii)):
        raise ValueError("rasterize_to_pixels (native CPU backend): all inputs must be CPU tensors")
    if width <= 0 or height <= 0 or tile_size <= 0:
        raise ValueError(f"rasterize_to_pixels: bad image size {width}x{height} or tile size {tile_size}")
    return _RasterizeToPixels.apply(
        means2d, conics, opacities, colors, depths, radii, width, height, tile_size
    )
