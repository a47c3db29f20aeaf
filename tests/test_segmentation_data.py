"""Segmentation folders: layouts, value mapping (VOC, ADE20K, Cityscapes), counted skips, paired transforms."""
import numpy as np
import pytest
import torch
from PIL import Image

from hybridvit.data.segmentation import (
    CITYSCAPES_TRAIN_IDS, SegmentationFolder, build_segmentation_data, find_segmentation_split,
    segmentation_transform,
)
from hybridvit.errors import DataError


def _write(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8), mode).save(path)


def _plain(root, masks):
    for i, mask in enumerate(masks):
        mask = np.asarray(mask, dtype=np.uint8)
        _write(root / "images" / "train" / f"{i}.png", np.zeros((*mask.shape, 3)))
        _write(root / "masks" / "train" / f"{i}.png", mask)


def test_plain_layout_skips_and_counts_bad_samples(tmp_path):
    good = np.array([[0, 1], [2, 255]])
    _plain(tmp_path, [good, good, np.array([[0, 9], [1, 1]])])
    (tmp_path / "classes.txt").write_text("bg\na\nb\n")
    _write(tmp_path / "images" / "train" / "3.png", np.zeros((3, 3, 3)))  # mask of another size
    _write(tmp_path / "masks" / "train" / "3.png", good)
    _write(tmp_path / "images" / "train" / "4.png", np.zeros((2, 2, 3)))
    (tmp_path / "masks" / "train" / "4.png").write_bytes(b"not a png")
    _write(tmp_path / "images" / "train" / "5.png", np.zeros((2, 2, 3)))  # no mask at all
    with pytest.warns(UserWarning, match="skipping"):
        data = SegmentationFolder(find_segmentation_split(tmp_path, "train"))
    assert data.classes == ["bg", "a", "b"] and len(data) == 2
    assert dict(data.skip_reasons) == {
        "unknown class value": 1, "mask size differs from image size": 1, "unreadable mask": 1, "no mask": 1,
    }
    image, mask = data[0]
    assert image.size == (2, 2) and mask.tolist() == good.tolist()


def test_plain_layout_infers_classes_from_the_masks(tmp_path):
    _plain(tmp_path, [[[0, 3]], [[255, 1]]])
    assert SegmentationFolder(find_segmentation_split(tmp_path, "train")).classes == ["0", "1", "2", "3"]


def test_voc_palette_masks_keep_their_indices(tmp_path):
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    _write(voc / "JPEGImages" / "a.jpg", np.zeros((2, 3, 3)))
    mask = Image.fromarray(np.array([[0, 15, 255], [20, 1, 0]], dtype=np.uint8), "P")
    mask.putpalette([v for i in range(256) for v in (i, 255 - i, 0)])
    (voc / "SegmentationClass").mkdir()
    mask.save(voc / "SegmentationClass" / "a.png")
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("a\n")
    data = SegmentationFolder(find_segmentation_split(tmp_path, "val"))
    assert len(data.classes) == 21 and data[0][1].tolist() == [[0, 15, 255], [20, 1, 0]]


def test_ade20k_reduces_the_zero_label(tmp_path):
    _write(tmp_path / "images" / "validation" / "x.jpg", np.zeros((1, 3, 3)))
    _write(tmp_path / "annotations" / "validation" / "x.png", [[0, 1, 150]])
    (tmp_path / "images" / "training").mkdir()
    (tmp_path / "annotations" / "training").mkdir()
    data = SegmentationFolder(find_segmentation_split(tmp_path, "val"))
    assert len(data.classes) == 150 and data[0][1].tolist() == [[255, 0, 149]]


def test_cityscapes_label_ids_become_the_19_train_ids(tmp_path):
    ids = np.arange(34, dtype=np.uint8)[None]
    _write(tmp_path / "leftImg8bit" / "val" / "bonn" / "bonn_0_0_leftImg8bit.png", np.zeros((1, 34, 3)))
    _write(tmp_path / "gtFine" / "val" / "bonn" / "bonn_0_0_gtFine_labelIds.png", ids)
    data = SegmentationFolder(find_segmentation_split(tmp_path, "val"))
    mapped = data[0][1][0].tolist()
    assert len(data.classes) == 19
    assert mapped == [CITYSCAPES_TRAIN_IDS.get(i, 255) for i in range(34)]
    assert sorted(set(mapped) - {255}) == list(range(19))


def test_unknown_layout_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="no segmentation layout recognised"):
        find_segmentation_split(tmp_path, "train")


def test_paired_transform_keeps_image_and_mask_aligned():
    image = torch.zeros(3, 40, 60, dtype=torch.uint8)
    image[:, :, :30] = 255  # left half white = class 1
    mask = torch.zeros(40, 60, dtype=torch.int64)
    mask[:, :30] = 1
    from torchvision import tv_tensors

    transform = segmentation_transform(True, 32, (0.0,) * 3, (1.0,) * 3, base_size=40, scale_range=(0.5, 2.0))
    torch.manual_seed(0)
    for _ in range(10):
        x, m = transform(tv_tensors.Image(image), tv_tensors.Mask(mask))
        assert x.shape == (3, 32, 32) and m.shape == (32, 32) and m.dtype == torch.int64
        inside = m != 255  # padding is ignored in the mask
        assert torch.equal((x[0] > 0.5)[inside], (m == 1)[inside])
        assert x.dtype == torch.float32


def test_digit_scenes_are_the_default():
    data = build_segmentation_data(None, check="header")
    assert data.classes == ["background"] + [str(d) for d in range(10)]
    assert len(data.train) == 400 and len(data.val) == 100 and not data.skipped
