"""Each detection head learns digit scenes: a measured COCO mAP floor after a short CPU fit.

A from-scratch backbone does not learn ten digit classes from a few hundred scenes within a CI
budget (SSDLite-MobileViT-XXS through the engine, 200 scenes of 96 px: AP50 0.004 after 150 steps),
so each head fits four scenes and is scored on them by pycocotools: matching, losses, box coding,
label mapping and decoding must all work for boxes and labels (and Mask R-CNN's instance masks, scored
as mask AP) to come back. Floors are the values these runs measured (see each), with margin.
"""
import pytest
import torch

from hybridvit.data.coco import CocoDetection, find_coco_split
from hybridvit.data.digit_scenes import SceneConfig, digit_scenes
from hybridvit.tasks import create_detector
from hybridvit.tasks.coco_eval import coco_evaluate, to_coco_results

SCENES = SceneConfig(size=96, num_train=4, num_val=1, digits_per_scene=(1, 2), digit_size=(32, 48))


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = digit_scenes(SCENES, cache_dir=tmp_path_factory.mktemp("cache"))
    data = CocoDetection(*find_coco_split(root, "train"), masks=True)
    return data, [data[i] for i in range(len(data))]


# head: (detector kwargs, steps, lr, {metric: floor}). Each floor fails when the head is broken once (SSDLite:
# class logits detached from the loss, AP50 0.02; YOLOv3: x/y swapped in the decoding, AP50 0.0;
# RetinaNet: labels shifted by one, AP50 0.10). RetinaNet's focal-loss head (torchvision's N(0, 0.01)
# convs, prior 0.01) stays at the prior for ~40 steps: 50 steps gave AP50 0.045, 60 at lr 2e-3 0.024.
# A mask_AP50 floor trains with the instance masks and scores them too.
FITS = {
    "ssdlite": ({"image_size": 96}, 40, 3e-3, {"AP50": 0.3}),  # measured AP50 0.527 (AMD EPYC), 0.642 (Intel Xeon AVX-512)
    "yolov3": ({"image_size": 96}, 40, 3e-3, {"AP50": 0.05}),  # measured AP50 0.101
    "retinanet": ({"image_size": 96, "fpn_channels": 128}, 90, 1e-3, {"AP50": 0.5}),  # measured AP50 1.0
    # measured AP50 1.0, mask_AP50 1.0 (twice), 21-22 s (Intel Xeon AVX-512, 1 thread); seeds 1 and 2 also
    # 1.0 / 1.0, and at 60 steps 0.8 / 0.8 (seed 0), 1.0 / 0.90 (seed 2). Broken once: labels shifted by one
    # 0.0 / 0.0; mask targets zeroed 1.0 / 0.0; masks transposed 1.0 / 0.0; each box given the next box's
    # mask in to_coco_results 1.0 / 0.3. torchvision's default heads and sampling (fc 1024, 4x256 mask
    # convs, 2000 proposals, 512 RoIs) on this 64-channel FPN take 3 s a step here, these 0.2 s.
    "maskrcnn": (
        {
            "image_size": 96, "fpn_channels": 64, "box_representation_size": 256, "mask_head_channels": 32,
            "rpn_post_nms_top_n_train": 100, "box_batch_size_per_image": 32,
        },
        100, 2e-3, {"AP50": 0.5, "mask_AP50": 0.5},
    ),
}


@pytest.mark.parametrize("head", sorted(FITS))
def test_head_fits_digit_scenes(head, scenes):
    data, samples = scenes
    kwargs, steps, lr, floors = FITS[head]
    with_masks = "mask_AP50" in floors
    keys = ("boxes", "labels", "masks") if with_masks else ("boxes", "labels")
    detector = create_detector(head, "hv_mobilevit_xxs", num_classes=len(data.category_ids), **kwargs)
    images = [image for image, _ in samples]
    targets = [{k: v for k, v in t.items() if k in keys} for _, t in samples]
    optimizer = torch.optim.AdamW(detector.parameters(), lr=lr)
    for _ in range(steps):
        loss = sum(detector(images, targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    detector.eval()
    with torch.no_grad():
        outputs = detector(images)
    results = to_coco_results(outputs, [t["image_id"] for _, t in samples], data.category_ids)
    metrics = coco_evaluate(data.ground_truth(), results, iou_types=("bbox", "segm") if with_masks else ("bbox",))
    print(head, {k: round(v, 3) for k, v in metrics.items()})
    assert all(metrics[name] >= floor for name, floor in floors.items()), {name: metrics[name] for name in floors}
