"""Geometry priors: per-view cameras and dense point maps with confidences (``PriorResult``).

- ``base``: the ``PriorResult`` type and ``Prior`` protocol (light, imported by every stage).
- ``factory``: ``PriorConfig`` and ``make_prior`` (which prior a run uses).
- ``classical/``: the default prior (SfM + dense stereo), needs no weights.
- ``networks/``, ``checkpoints``, ``align``: learned priors (DUSt3R, MASt3R, VGGT) from local checkpoints.
"""
