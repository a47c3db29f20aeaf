"""Dense-prediction heads around hybridvit backbones: detectors (SSDLite, RetinaNet, YOLOv3, Mask R-CNN), DeepLabv3."""
from .backbone import FPNBackbone, create_feature_extractor
from .detection import DETECTION_HEADS, create_detector
from .maskrcnn import create_maskrcnn
from .retinanet import create_retinanet
from .segmentation import DeepLabV3
from .ssdlite import create_ssdlite
from .yolov3 import YOLOv3, create_yolov3

__all__ = [
    "DETECTION_HEADS",
    "DeepLabV3",
    "YOLOv3",
    "FPNBackbone",
    "create_detector",
    "create_feature_extractor",
    "create_maskrcnn",
    "create_retinanet",
    "create_ssdlite",
    "create_yolov3",
]
