"""Dense-prediction heads around hybridvit backbones: RetinaNet detection, DeepLabv3 segmentation."""
from .backbone import FPNBackbone, create_feature_extractor
from .detection import create_retinanet
from .segmentation import DeepLabV3

__all__ = ["DeepLabV3", "FPNBackbone", "create_feature_extractor", "create_retinanet"]
