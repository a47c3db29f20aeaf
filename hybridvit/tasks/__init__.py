"""Dense-prediction heads around hybridvit backbones: detectors (SSDLite, RetinaNet, YOLOv3, Mask R-CNN), segmenters
(DeepLabv3, all-MLP, UperNet)."""
from .backbone import FPNBackbone, create_feature_extractor
from .detection import DETECTION_HEADS, create_detector
from .maskrcnn import create_maskrcnn
from .retinanet import create_retinanet
from .segmentation import SEGMENTATION_HEADS, Segmenter, create_segmenter, segmenter_from_spec
from .ssdlite import create_ssdlite
from .yolov3 import YOLOv3, create_yolov3

__all__ = [
    "DETECTION_HEADS",
    "SEGMENTATION_HEADS",
    "Segmenter",
    "YOLOv3",
    "FPNBackbone",
    "create_detector",
    "create_feature_extractor",
    "create_maskrcnn",
    "create_retinanet",
    "create_segmenter",
    "create_ssdlite",
    "segmenter_from_spec",
    "create_yolov3",
]
