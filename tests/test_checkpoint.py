import pytest
import torch

import hybridvit
from hybridvit.checkpoint import save_weights


def test_safetensors_roundtrip(tmp_path):
    model = hybridvit.create_model("hv_mobilevit_xxs", num_classes=10)
    save_weights(model, tmp_path / "w.safetensors")
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]  # no temp file left behind
    loaded = hybridvit.create_model("hv_mobilevit_xxs", num_classes=10, pretrained_path=tmp_path / "w.safetensors")
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file at all")
    with pytest.raises(hybridvit.CheckpointError, match="corrupt"):
        hybridvit.create_model("hv_mobilevit_xxs", pretrained_path=bad)
    with pytest.raises(hybridvit.CheckpointError, match="not found"):
        hybridvit.create_model("hv_mobilevit_xxs", pretrained_path=tmp_path / "missing.pt")


def test_checkpoint_of_another_model_is_a_clear_error(tmp_path):
    save_weights(hybridvit.create_model("hv_mobilevit_xs"), tmp_path / "xs.safetensors")
    with pytest.raises(hybridvit.CheckpointError, match="does not fit model"):
        hybridvit.create_model("hv_mobilevit_xxs", pretrained_path=tmp_path / "xs.safetensors")


def test_unknown_model():
    with pytest.raises(hybridvit.UnknownModelError, match="did you mean"):
        hybridvit.create_model("hv_mobilevit_xxxs")
