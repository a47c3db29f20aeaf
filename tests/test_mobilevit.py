"""MobileViT XXS/XS/S against timm's implementation and the paper (Table 4)."""
import pytest
import timm
import torch

import hybridvit
from hybridvit.bench.flops import count_macs_at, count_params
from hybridvit.convert import mobilevit_from_cvnets
from helpers import cvnets_key  # spec §5's names, written independently of the converter

VARIANTS = ["xxs", "xs", "s"]
PAPER_PARAMS_M = {"xxs": 1.3, "xs": 2.3, "s": 5.6}


def _meta(name):
    with torch.device("meta"):
        return timm.create_model(name)


@pytest.mark.parametrize("variant", VARIANTS)
def test_param_count_equals_timm_and_paper(variant):
    ours = count_params(_meta(f"hv_mobilevit_{variant}"))
    assert ours == count_params(_meta(f"mobilevit_{variant}"))
    # The paper prints one decimal: our count must round to it (XXS 1.272M is 2.2% under "1.3M").
    assert round(ours / 1e6, 1) == PAPER_PARAMS_M[variant]


def test_param_counts_exact():
    # timm 1.0.31 numbers quoted in the spec (§2), as a guard against timm drifting under us.
    counts = [count_params(_meta(f"hv_mobilevit_{v}")) for v in VARIANTS]
    assert counts == [1_272_024, 2_317_848, 5_578_632]


@pytest.mark.parametrize("variant", VARIANTS)
def test_logits_equal_timm_with_converted_weights(variant):
    ref = timm.create_model(f"mobilevit_{variant}").eval()
    ours = hybridvit.create_model(f"hv_mobilevit_{variant}").eval()
    ours.load_state_dict(hybridvit.convert.mobilevit_from_timm(ref.state_dict()))
    # 250x270 exercises the resize path around the transformer (odd feature maps).
    for size in [(256, 256), (250, 270)]:
        x = torch.randn(2, 3, *size)
        with torch.no_grad():
            torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("output_stride", [16, 8])
def test_dilated_output_stride_equals_timm(output_stride):
    # timm's own MobileViT takes output_stride (byobnet's dilation rule); ours must compute the same.
    ref = timm.create_model("mobilevit_xxs", output_stride=output_stride).eval()
    ours = hybridvit.create_model("hv_mobilevit_xxs", output_stride=output_stride).eval()
    ours.load_state_dict(hybridvit.convert.mobilevit_from_timm(ref.state_dict()))
    x = torch.randn(2, 3, 96, 112)
    with torch.no_grad():
        torch.testing.assert_close(ours.forward_features(x), ref.forward_features(x), atol=1e-5, rtol=0)
    features = timm.create_model("hv_mobilevit_xxs", output_stride=output_stride, features_only=True)
    assert features.feature_info.reduction() == [min(r, output_stride) for r in (2, 4, 8, 16, 32)]


def test_macs_match_analytic_count():
    # spec §2 [calc]: conv+linear 0.329/0.909/1.823 G, + attention matmuls 0.407/1.026/2.001 G.
    for variant, (without, total) in zip(VARIANTS, [(0.329, 0.407), (0.909, 1.026), (1.823, 2.001)]):
        macs = count_macs_at(_meta(f"hv_mobilevit_{variant}"), 256)
        assert macs.total / 1e9 == pytest.approx(total, abs=1e-3)
        assert macs.without_attention / 1e9 == pytest.approx(without, abs=1e-3)


def test_features_only_strides_and_channels():
    model = timm.create_model("hv_mobilevit_xs", features_only=True).eval()
    assert model.feature_info.reduction() == [2, 4, 8, 16, 32]
    assert model.feature_info.channels() == [32, 48, 64, 80, 96]
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 224, 224))
    assert [tuple(f.shape) for f in feats] == [
        (1, 32, 112, 112), (1, 48, 56, 56), (1, 64, 28, 28), (1, 80, 14, 14), (1, 96, 7, 7)
    ]


def test_cvnets_checkpoint_loads_through_converter(tmp_path):
    """An ml-cvnets state dict (key names from spec §5) loads strict, with the stem flipped BGR->RGB."""
    ours = hybridvit.create_model("hv_mobilevit_xxs").eval()
    cvnets = {cvnets_key(k, depths=(2, 4, 3)): v.clone() for k, v in ours.state_dict().items()}
    cvnets["conv_1.block.conv.weight"] = cvnets["conv_1.block.conv.weight"].flip(1)  # stored BGR
    assert "layer_3.1.global_rep.2.weight" in cvnets  # the final LayerNorm of layer3 (L = 2)
    assert "layer_4.1.global_rep.1.pre_norm_ffn.4.weight" in cvnets
    path = tmp_path / "cvnets.pt"
    torch.save({"state_dict": cvnets}, path)
    loaded = hybridvit.create_model("hv_mobilevit_xxs", pretrained_path=path).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), ours(x), atol=0, rtol=0)
    assert mobilevit_from_cvnets({"conv_1.block.conv.weight": torch.zeros(1, 3, 1, 1)}).keys() == {"stem.conv.weight"}


def test_wrong_channel_count_is_a_clear_error():
    model = hybridvit.create_model("hv_mobilevit_xxs")
    with pytest.raises(hybridvit.InputShapeError, match="expected 3 input channels, got 1"):
        model(torch.randn(1, 1, 64, 64))
    with pytest.raises(hybridvit.InputShapeError, match="4-D image batch"):
        model(torch.randn(3, 64, 64))
