"""Clean-room PyTorch networks of the learned priors, state-dict compatible with the public checkpoints.

- :mod:`.layers`: generic ViT pieces (Mlp, Attention with RoPE, CrossAttention, Block, DecoderBlock,
  PatchEmbed, LayerScale, unpatchify); :mod:`.rope`: 2D rotary position embedding.
- :mod:`.croco`: the CroCo two-view encoder/decoder backbone; :mod:`.dpt`: the DUSt3R-style DPT head.
- :mod:`.dust3r`: :class:`DUSt3R` (its heads and output activations); :mod:`.dust3r_config`:
  :class:`Dust3RConfig`; :mod:`.network_input`: input preparation and :class:`NetworkCrop`;
  :mod:`.mast3r`: :class:`MASt3R`.

Reading checkpoint files (and the ReconError messages for bad files) lives in
:mod:`recon.priors.checkpoints`; loading a state dict into a network strictly in :mod:`.loading`.
"""

from recon.priors.networks.dust3r import DUSt3R, Dust3RConfig, NetworkCrop, prepare_image
from recon.priors.networks.mast3r import MASt3R

__all__ = ["DUSt3R", "MASt3R", "Dust3RConfig", "NetworkCrop", "prepare_image"]
