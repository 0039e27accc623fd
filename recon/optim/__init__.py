"""Optimisation: losses, the joint Gaussian + pose trainer, pose-only fitting, densification, checkpoints.

Import the submodules directly (``from recon.optim.trainer import train``); this package stays light so
that importing e.g. the losses does not pull in the renderer.
"""
