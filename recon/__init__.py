"""recon: pose-free sparse-view 3D Gaussian reconstruction (see README.md)."""

import os

# OpenMP worker threads spin after each parallel region by default. With another busy process on a
# 2-core laptop (or torch's own ops between our kernels' regions) the spinners are descheduled at
# barriers and every step slows ~40x (measured: 1600 ms vs 39 ms per training step). Sleeping waiters
# avoid that at a negligible cost. It only takes effect when set before torch loads OpenMP, i.e. when
# recon is imported first (the CLI does); users can override it in the environment.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
