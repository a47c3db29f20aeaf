"""GhostNet checkpoints from timm (`ghostnet_050/100/130`) into hybridvit's layout (= timm's)."""
from __future__ import annotations

import torch

_LAST_STAGE = "blocks.8."  # GhostNet's four 160/960 bottlenecks at 1/32, which MoCoViT replaces by MTBs


def ghostnet_from_timm(
    state_dict: dict[str, torch.Tensor], drop_last_stage: bool = False
) -> dict[str, torch.Tensor]:
    """timm GhostNet keys already equal ours (`hv_ghostnet_100`), so this is a plain copy.

    With `drop_last_stage`, the last stage's weights are left out, so the rest initialises the CNN part
    of a MoCoViT of the same width: `model.load_state_dict(sd, strict=False)` then misses only the MTBs.
    """
    return {k: v for k, v in state_dict.items() if not (drop_last_stage and k.startswith(_LAST_STAGE))}
