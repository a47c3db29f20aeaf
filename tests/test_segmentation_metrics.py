"""mIoU from one confusion matrix over the set: a hand-computed case and torchmetrics' number."""
import math

import pytest
import torch
from torchmetrics.classification import MulticlassJaccardIndex

from hybridvit.tasks.segmentation_metrics import confusion_matrix, predict_logits, segmentation_scores


def test_hand_computed_confusion_matrix_with_an_ignored_pixel_and_an_absent_class():
    # 4 classes; class 3 never occurs (NaN, left out of the mean); one pixel is labelled 255.
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 0]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 3, 0]])
    conf = confusion_matrix(pred, target, 4)
    assert conf.tolist() == [[2, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    scores = segmentation_scores(conf)
    # IoU: class 0 = 2 / (3 + 3 - 2) = 1/2; class 1 = 2 / (2 + 3 - 2) = 2/3; class 2 = 1 / 2; class 3: 0/0.
    assert scores["class_iou"][:3] == pytest.approx([50.0, 200 / 3, 50.0])
    assert math.isnan(scores["class_iou"][3])
    assert scores["miou"] == pytest.approx(100 * (1 / 2 + 2 / 3 + 1 / 2) / 3)
    assert scores["pixel_acc"] == pytest.approx(100 * 5 / 7)


def test_miou_equals_torchmetrics_over_the_whole_set():
    generator = torch.Generator().manual_seed(0)
    num_classes, metric = 6, MulticlassJaccardIndex(6, average="macro", ignore_index=255)
    total = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    for _ in range(3):  # accumulated batch by batch, like an evaluation loop
        target = torch.randint(0, num_classes, (2, 17, 23), generator=generator)
        target[torch.rand(target.shape, generator=generator) < 0.1] = 255
        # predictions right 60% of the time, so the classes' IoUs differ from each other
        pred = torch.where(torch.rand(target.shape, generator=generator) < 0.6, target.clamp(max=num_classes - 1),
                           torch.randint(0, num_classes, target.shape, generator=generator))
        total += confusion_matrix(pred, target, num_classes)
        metric.update(pred, target)
    assert segmentation_scores(total)["miou"] == pytest.approx(100 * metric.compute().item(), abs=1e-4)


def test_flip_and_multiscale_tta_average_probabilities():
    class Mirror(torch.nn.Module):  # logits that depend on the position: flipping must be undone
        def forward(self, x):
            ramp = torch.linspace(-1, 1, x.shape[-1]).expand_as(x[:, :1])
            return torch.cat([ramp, -ramp], dim=1)

    x = torch.zeros(1, 3, 8, 8)
    single = predict_logits(Mirror(), x).softmax(1)
    # the flipped pass's probabilities are flipped back before averaging
    torch.testing.assert_close(predict_logits(Mirror(), x, flip=True), (single + single.flip(-1)) / 2)
    assert predict_logits(Mirror(), x, scales=(0.5, 1.0, 1.5), flip=True).shape == (1, 2, 8, 8)
