"""Segmentation heads: published parameter counts, shapes, the head learning-rate split, clear errors."""
import pytest
import torch

import hybridvit  # noqa: F401  (registers the models)
from hybridvit.bench.flops import count_params
from hybridvit.errors import UnknownHeadError, UnsupportedBackboneError
from hybridvit.tasks import create_segmenter


def _meta(head, backbone, num_classes, **kwargs):
    with torch.device("meta"):
        return create_segmenter(head, backbone, num_classes, **kwargs)


@pytest.mark.parametrize("variant, paper_m", [("xxs", 1.9), ("xs", 2.9), ("s", 6.4)])
def test_deeplabv3_mobilevit_params_round_to_the_paper(variant, paper_m):
    # MobileViT Table 2 (PASCAL VOC, 21 classes): DeepLabv3-MobileViT-XXS 1.9M, XS 2.9M, S 6.4M.
    params = count_params(_meta("deeplabv3", f"hv_mobilevit_{variant}", 21))
    assert round(params / 1e6, 1) == paper_m


def test_head_param_counts_exact():
    # Guards for the README numbers (heads + backbone without its 1x1 expansion conv and classifier).
    assert count_params(_meta("deeplabv3", "hv_mobilevit_s", 21)) == 6_357_941
    assert count_params(_meta("allmlp", "xformer_s", 19)) == 5_113_269
    assert count_params(_meta("upernet", "hv_mobilevit_s", 150)) == 32_421_836


def test_deeplabv3_taps_a_dilated_stride_16_map():
    model = create_segmenter("deeplabv3", "hv_mobilevit_xxs", 5).eval()
    assert model.backbone.feature_info.reduction() == [16]
    assert model.head.aspp.dropout.p == 0.1 and model.head.dropout.p == 0.1
    rates = [conv[0].dilation for conv in model.head.aspp.convs[1:4]]
    assert rates == [(6, 6), (12, 12), (18, 18)]


@pytest.mark.parametrize("head", ["deeplabv3", "allmlp", "upernet"])
@pytest.mark.parametrize("backbone", ["hv_mobilevit_xxs", "xformer_xxs"])
def test_logits_have_the_input_size(head, backbone):
    model = create_segmenter(head, backbone, 7).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 72, 88))
    assert out.shape == (2, 7, 72, 88)


def test_upernet_auxiliary_head_in_training_only_output():
    model = create_segmenter("upernet", "hv_mobilevit_xxs", 4, channels=32)
    assert model.aux_weight == 0.4 and model.backbone.feature_info.reduction() == [4, 8, 16, 32]
    logits, aux = model(torch.randn(2, 3, 64, 64), with_aux=True)
    assert logits.shape == aux.shape == (2, 4, 64, 64)
    assert model.aux_head.conv[0].in_channels == model.backbone.feature_info.channels()[2]
    assert create_segmenter("allmlp", "hv_mobilevit_xxs", 4)(torch.randn(1, 3, 64, 64), with_aux=True)[1] is None


def test_head_parameters_are_everything_but_the_backbone():
    model = _meta("allmlp", "hv_mobilevit_xxs", 4)
    head = model.head_parameters()
    assert sum(p.numel() for p in head) == count_params(model) - count_params(model.backbone)
    assert sum(p.numel() for p in head) == count_params(model.head)


def test_clear_errors():
    with pytest.raises(UnknownHeadError, match="choose one of deeplabv3, allmlp, upernet"):
        create_segmenter("pspnet", "hv_mobilevit_xxs", 4)
    with pytest.raises(UnsupportedBackboneError, match="stride"):
        _meta("upernet", "ceit_tiny_patch16_224", 4)  # a plain ViT: every level at stride 16
    with pytest.raises(UnsupportedBackboneError, match="output stride 16"):
        _meta("deeplabv3", "boat_swin_tiny", 4)


def test_segmenter_exports_to_onnx_with_dynamic_hw(tmp_path):
    # Checked like the classifiers: onnxruntime against eager at the export size, another batch, +-32 px.
    from hybridvit.export.api import export_model

    result = export_model("deeplabv3:hv_mobilevit_xxs", "onnx", out=tmp_path / "seg.onnx", res=64, dynamic=True)
    assert result.dynamic_hw and result.max_error < 1e-4
    assert (3, 3, 96, 96) in result.checked_shapes
