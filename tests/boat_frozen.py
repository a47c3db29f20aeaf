"""The frozen-output cases of BOAT (`test_boat.py::test_outputs_unchanged_where_the_reference_works`).

Only `BoatConfig` and `BoatTransformer` are imported, which the code before any-size support (commit
f92a001) has too: `tools/boat_freeze.py` runs `frozen_case` against that commit to write the outputs.
"""
import torch
import torch.nn as nn

from hybridvit.models.boat import BoatConfig, BoatTransformer

# Reduced width, the paper's window (7), stripes (1, 2, 7, 7), groups (49) and overlap (20), so that the
# sizes that need padding are the real models' sizes (also used by tests/test_boat.py).
NARROW = {
    "boat_swin_tiny": BoatConfig("swin", 8, (2, 2, 2, 2), (1, 2, 2, 4), 0.0),
    "boat_cswin_tiny": BoatConfig("cswin", 8, (1, 2, 2, 1), (2, 2, 4, 4), 0.0),
}
FROZEN_CASES = ["swin_224", "swin_448", "cswin_224", "cswin_224_paired", "cswin_448"]


def exact_values(numel: int, seed: int) -> torch.Tensor:
    """`numel` float64 values in [-0.5, 0.5) from integer hashing and IEEE division only, so the same bits on
    every CPU (torch's random init is not: its erfinv/log kernels round differently under AVX2 and AVX-512).
    Multiply-add, xor-shift rounds modulo 2**31 (no int64 overflow); a bare i * a mod m would give weights
    of lattice structure, nearly low-rank, and near-tie clustering keys."""
    z = (torch.arange(numel, dtype=torch.int64) * 2654435761 + seed * 40503) % 2**31
    for a in (1103515245, 69069, 134775813):
        z = ((z ^ (z >> 15)) * a + 12345) % 2**31
    return z.double() / 2**31 - 0.5


def frozen_case(case: str) -> tuple[nn.Module, torch.Tensor]:
    """The narrow float64 model and input of one frozen case, with CPU-independent weights and input."""
    isla, size, *paired = case.split("_")
    model = BoatTransformer(
        NARROW[f"boat_{isla}_tiny"], num_classes=10, img_size=int(size), reference_batch_pairing=bool(paired)
    ).double().eval()
    with torch.no_grad():
        for seed, (name, p) in enumerate(model.named_parameters()):
            values = exact_values(p.numel(), seed).view_as(p)
            p.copy_(1 + values / 4 if "norm" in name and name.endswith("weight") else values / 2)
    return model, 4 * exact_values(2 * 3 * int(size) ** 2, 12345).view(2, 3, int(size), int(size))
