"""MobileViT checkpoints from timm and ml-cvnets into hybridvit's layout (= timm's; spec §5)."""
from __future__ import annotations

import torch

from ._rename import RenameRule, rename_keys

# ml-cvnets -> timm/hybridvit key rules (spec §5.1), applied in order.
_CVNETS_RULES: list[RenameRule] = [
    (r"^conv_1\.", "stem."),
    (r"^layer_(\d)\.", lambda m: f"stages.{int(m.group(1)) - 1}."),
    (r"\.block\.exp_1x1\.", ".conv1_1x1."),
    (r"\.block\.conv_3x3\.", ".conv2_kxk."),
    (r"\.block\.red_1x1\.", ".conv3_1x1."),
    (r"\.local_rep\.conv_3x3\.", ".conv_kxk."),
    (r"\.local_rep\.conv_1x1\.block\.conv\.", ".conv_1x1."),
    (r"\.global_rep\.(\d+)\.(weight|bias)$", r".norm.\2"),  # the LayerNorm after the last layer
    (r"\.global_rep\.(\d+)\.pre_norm_mha\.0\.", r".transformer.\1.norm1."),
    (r"\.global_rep\.(\d+)\.pre_norm_mha\.1\.qkv_proj\.", r".transformer.\1.attn.qkv."),
    (r"\.global_rep\.(\d+)\.pre_norm_mha\.1\.out_proj\.", r".transformer.\1.attn.proj."),
    (r"\.global_rep\.(\d+)\.pre_norm_ffn\.0\.", r".transformer.\1.norm2."),
    (r"\.global_rep\.(\d+)\.pre_norm_ffn\.1\.", r".transformer.\1.mlp.fc1."),
    (r"\.global_rep\.(\d+)\.pre_norm_ffn\.4\.", r".transformer.\1.mlp.fc2."),
    (r"\.fusion\.", ".conv_fusion."),
    (r"^conv_1x1_exp\.", "final_conv."),
    (r"^classifier\.fc\.", "head.fc."),
    (r"\.block\.conv\.", ".conv."),
    (r"\.block\.norm\.", ".bn."),
]


def is_cvnets_mobilevit(state_dict: dict[str, torch.Tensor]) -> bool:
    return "conv_1.block.conv.weight" in state_dict


def mobilevit_from_cvnets(state_dict: dict[str, torch.Tensor], bgr_to_rgb: bool = True) -> dict[str, torch.Tensor]:
    """Rename ml-cvnets MobileViT keys to ours.

    cvnets v0.1 trained on BGR input (spec §5.3); with `bgr_to_rgb` the stem's input channels are
    reversed so the weights take RGB images like the rest of hybridvit.
    """
    out = rename_keys(state_dict, _CVNETS_RULES)
    if bgr_to_rgb:
        out["stem.conv.weight"] = out["stem.conv.weight"].flip(1)
    return out


def mobilevit_from_timm(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm's `mobilevit_*` state dicts already use our names; returned as a plain copy."""
    return dict(state_dict)
