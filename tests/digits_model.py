"""A tiny classifier trained on the embedded digits in about a second, for attack/eval tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class DigitsMLP(nn.Module):
    """A tiny classifier for 8x8 digits with BatchNorm, forward_features and fc."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU())
        self.fc = nn.Linear(32, 10)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.forward_features(x))


def train_digits_mlp(x: Tensor, y: Tensor, *, seed: int = 0, epochs: int = 4) -> DigitsMLP:
    """Adam for a few epochs on ``(x, y)`` (images in [0, 1]); returned in eval mode, no grads."""
    torch.manual_seed(seed)
    model = DigitsMLP()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(epochs):
        for idx in torch.randperm(len(x)).split(64):
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    for p in model.parameters():
        p.grad = None
    return model.eval()
