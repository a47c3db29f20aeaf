import torch
import torch.nn as nn

from hybridvit.bench.flops import count_macs, count_macs_at
from hybridvit.layers.attention import MultiHeadSelfAttention


def test_counter_counts_sdpa_on_cpu():
    """MHSA on N tokens of width C: qkv 3NC^2 + proj NC^2 linear MACs, plus QK^T and AV: 2N^2 C."""
    N, C = 16, 32
    macs = count_macs(MultiHeadSelfAttention(C, num_heads=4), torch.randn(1, N, C))
    assert macs.total == 4 * N * C * C + 2 * N * N * C
    assert macs.attention == 2 * N * N * C


def test_explicit_bmm_counts_as_attention_and_linear_does_not():
    class Toy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 8, bias=False)

        def forward(self, x):
            return self.fc(x) @ x.transpose(1, 2)

    macs = count_macs(Toy(), torch.randn(2, 5, 8))
    assert macs.without_attention == 2 * 5 * 8 * 8
    assert macs.attention == 2 * 5 * 5 * 8


def test_meta_count_equals_real_count():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1))
    real = count_macs(model, torch.randn(1, 3, 10, 12))
    assert real == count_macs_at(model, (10, 12))
    assert real.total == 10 * 12 * (8 * 3 * 9 + 4 * 8)
