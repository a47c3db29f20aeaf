"""Building blocks shared across model families; one concept per file."""
from .attention import MultiHeadSelfAttention
from .clustering import balanced_hierarchical_clustering, overlapping_key_index
from .cswin_attention import LePEAttention
from .dyrelu import DyReLU
from .fsla import FSLA
from .ghost import GhostBottleneck, GhostModule
from .i2t import I2TStem, ImageToTokens
from .init import init_weights_cvnets
from .lca import LCA, LCAAttention
from .leff import LeFF
from .mobilenet_blocks import MV2Block, MV3Block
from .mixers import MIXERS, check_mixer, create_mixer, mixer_names, mixer_no_weight_decay
from .mobilevit_block import MobileViTBlock
from .moffn import MoFFN
from .mosa import MoSA
from .patches import PatchGrid, fold_patches, unfold_patches
from .squeeze_excite import SqueezeExcite
from .transformer import TransformerLayer
from .xfa import XFA

__all__ = [
    "MIXERS",
    "FSLA",
    "LCA",
    "XFA",
    "DyReLU",
    "GhostBottleneck",
    "GhostModule",
    "I2TStem",
    "ImageToTokens",
    "LCAAttention",
    "LePEAttention",
    "LeFF",
    "MV2Block",
    "MV3Block",
    "MobileViTBlock",
    "MoFFN",
    "MoSA",
    "MultiHeadSelfAttention",
    "PatchGrid",
    "SqueezeExcite",
    "TransformerLayer",
    "balanced_hierarchical_clustering",
    "check_mixer",
    "create_mixer",
    "fold_patches",
    "init_weights_cvnets",
    "mixer_names",
    "mixer_no_weight_decay",
    "overlapping_key_index",
    "unfold_patches",
]
