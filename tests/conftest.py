import pytest
import torch


def pytest_configure(config):
    # One intra-op thread: with two cores, OpenMP threads that find the other core busy (the
    # torchrun test's second process, or anything else on the machine) spin and slow forwards ~30x.
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
