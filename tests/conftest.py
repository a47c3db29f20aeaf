import pytest
import torch


def pytest_configure(config):
    # One intra-op thread: with two cores, OpenMP threads that find the other core busy (the
    # torchrun test's second process, or anything else on the machine) spin and slow forwards ~30x.
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


DIGITS_BACKBONE_MODEL = "hv_mobilevit_xxs"


@pytest.fixture(scope="session")
def digits_backbone(tmp_path_factory):
    """Run directory of hv_mobilevit_xxs trained on the embedded 32x32 digits (2 epochs of the README main job).

    For dense-task tests: pass it as `--backbone-checkpoint` / `pretrained_path`. Built once per
    session through the library's own train path (about 20 s on the 2-core CPU; val top-1 ~90%).
    """
    from hybridvit.engine.train import TrainConfig, train

    out = tmp_path_factory.mktemp("digits_backbone")
    torch.manual_seed(0)
    train(TrainConfig(DIGITS_BACKBONE_MODEL, output=str(out), epochs=2, progress=False))
    return out
