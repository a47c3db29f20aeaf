"""Building blocks shared across model families; one concept per file."""
from .attention import MultiHeadSelfAttention
from .init import init_weights_cvnets
from .mobilenet_blocks import MV2Block
from .patches import PatchGrid, fold_patches, unfold_patches
from .transformer import TransformerLayer

__all__ = [
    "MV2Block",
    "MultiHeadSelfAttention",
    "PatchGrid",
    "TransformerLayer",
    "fold_patches",
    "init_weights_cvnets",
    "unfold_patches",
]
