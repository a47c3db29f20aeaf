import torch

from hybridvit.layers.patches import fold_patches, unfold_patches


def test_unfold_groups_each_pixel_position_into_one_sequence():
    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(2, 3, 4, 6)
    tokens, grid = unfold_patches(x, 2, 2)
    assert tokens.shape == (2 * 4, 2 * 3, 3)  # [B*P, N, C]
    # sequence 1 of image 0 is pixel (0, 1) of every patch; token 2 is patch (0, 2) -> pixel (0, 5)
    torch.testing.assert_close(tokens[1, 2], x[0, :, 0, 5])
    # sequence 4*1 + 2 is image 1, pixel (1, 0); token 3 is patch (1, 0) -> pixel (3, 0)
    torch.testing.assert_close(tokens[6, 3], x[1, :, 3, 0])
    torch.testing.assert_close(fold_patches(tokens, grid), x, atol=0, rtol=0)


def test_odd_sizes_resize_and_come_back():
    x = torch.randn(1, 2, 7, 5)
    tokens, grid = unfold_patches(x, 2, 2)
    assert tokens.shape == (4, 4 * 3, 2)  # resized to 8x6
    assert fold_patches(tokens, grid).shape == x.shape
