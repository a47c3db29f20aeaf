"""hybridvit models as detection and segmentation backbones."""
import torch

import hybridvit
from hybridvit.checkpoint import save_weights
from hybridvit.tasks import create_feature_extractor, create_retinanet


def test_backbone_loads_classification_weights(tmp_path):
    classifier = hybridvit.create_model("hv_mobilevit_xxs").eval()
    save_weights(classifier, tmp_path / "w.safetensors")
    backbone = create_feature_extractor("hv_mobilevit_xxs", pretrained_path=tmp_path / "w.safetensors").eval()
    assert backbone.feature_info.reduction() == [8, 16, 32]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = classifier.stages(classifier.stem(x))
        torch.testing.assert_close(backbone(x)[-1], expected, atol=0, rtol=0)


def test_retinanet_trains_and_detects():
    detector = create_retinanet("hv_mobilevit_xxs", num_classes=3, image_size=128, fpn_channels=32)
    images = [torch.rand(3, 128, 128), torch.rand(3, 96, 128)]
    targets = [
        {"boxes": torch.tensor([[10.0, 20.0, 70.0, 90.0]]), "labels": torch.tensor([1])},
        {"boxes": torch.tensor([[5.0, 5.0, 40.0, 60.0]]), "labels": torch.tensor([2])},
    ]
    losses = detector(images, targets)
    assert set(losses) == {"classification", "bbox_regression"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    detector.eval()
    with torch.no_grad():
        out = detector(images)
    assert len(out) == 2 and out[0]["boxes"].shape[-1] == 4
