"""Datasets (ImageFolder trees, the embedded scikit-learn digits, COCO detection json, the digit scenes)
and MobileViT's multi-scale variable-batch sampler."""
from .coco import CocoDetection, collate_detection, detection_transform, find_coco_split
from .datasets import DigitsDataset, ImageFolder, build_datasets
from .digit_scenes import SceneConfig, digit_scenes
from .sampler import MultiScaleBatchSampler, batch_size_for, multi_scale_resolutions

__all__ = [
    "CocoDetection", "DigitsDataset", "ImageFolder", "MultiScaleBatchSampler", "SceneConfig", "batch_size_for",
    "build_datasets", "collate_detection", "detection_transform", "digit_scenes", "find_coco_split",
    "multi_scale_resolutions",
]
