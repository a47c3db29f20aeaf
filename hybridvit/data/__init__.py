"""Datasets (ImageFolder trees, the embedded scikit-learn digits) and MobileViT's multi-scale variable-batch sampler."""
from .datasets import DigitsDataset, ImageFolder, build_datasets
from .sampler import MultiScaleBatchSampler, batch_size_for, multi_scale_resolutions

__all__ = ["DigitsDataset", "ImageFolder", "MultiScaleBatchSampler", "batch_size_for", "build_datasets", "multi_scale_resolutions"]
