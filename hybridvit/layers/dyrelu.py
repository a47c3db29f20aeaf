"""Dynamic ReLU, variant B (Chen et al., "Dynamic ReLU", ECCV 2020, arXiv 2003.10027, §3-4).

y_c = max_k (a_c^k(x) * x_c + b_c^k(x)), k = 1..K, with coefficients from a hyper function of the
whole input: theta(x) = 2 * sigmoid(FC(ReLU(FC(GAP(x))))) - 1 in [-1, 1] (Eq. 4), then
a_c^k = alpha^k + lambda_a * theta_a, b_c^k = beta^k + lambda_b * theta_b (Eq. 5) with the paper's
alpha^1 = 1, alpha^2..K = beta^k = 0, lambda_a = 1.0, lambda_b = 0.5. Variant B is spatial-shared and
channel-wise (2KC outputs), the paper's choice for ImageNet backbones.
"""
from __future__ import annotations

import torch
import torch.nn as nn


class DyReLU(nn.Module):
    """DY-ReLU-B on [B, C, H, W] maps. The last FC starts at zero, so at initialisation theta = 0 and
    the activation is exactly max(x, 0), a plain ReLU (the paper's alpha/beta initialisation).
    """

    def __init__(
        self,
        channels: int,
        reduction: int = 4,
        k: int = 2,
        lambda_a: float = 1.0,
        lambda_b: float = 0.5,
    ) -> None:
        super().__init__()
        self.channels = channels
        self.k = k
        self.lambda_a = lambda_a
        self.lambda_b = lambda_b
        self.alpha = (1.0,) + (0.0,) * (k - 1)  # beta^k = 0 for every k
        self.fc1 = nn.Linear(channels, max(1, channels // reduction))
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(self.fc1.out_features, 2 * k * channels)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def coefficients(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Slopes a and intercepts b, each [B, K, C, 1, 1]."""
        theta = 2 * torch.sigmoid(self.fc2(self.act(self.fc1(x.mean((2, 3)))))) - 1
        theta = theta.view(x.shape[0], 2 * self.k, self.channels, 1, 1)
        alpha = theta.new_tensor(self.alpha).view(1, self.k, 1, 1, 1)
        return alpha + self.lambda_a * theta[:, : self.k], self.lambda_b * theta[:, self.k :]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.coefficients(x)
        out = x * a[:, 0] + b[:, 0]
        for i in range(1, self.k):  # K pieces (2), not tokens
            out = torch.maximum(out, x * a[:, i] + b[:, i])
        return out
