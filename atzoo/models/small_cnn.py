"""A small, fast CNN for tests, demos and smoke runs.

Three conv-BN-ReLU stages (32, 64, 128 channels; the last two with stride 2), global
average pooling and a linear head. About 0.1 M parameters. Adaptive pooling lets it take
8x8 single-channel digits as well as 32x32 RGB images. It has BatchNorm, so routed BN,
feature taps and every method run on it exactly as on the large networks.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from atzoo.models.layers import architecture, pooling


class SmallCNN(nn.Module):
    """conv-BN-ReLU x 3, pooling, ``fc``.

    Args:
        num_classes: outputs of ``fc``.
        in_channels: input image channels.
        normalize: the optional first layer (identity when off).
        widths: channels of the three stages.
    """

    def __init__(self, num_classes: int, in_channels: int, normalize: nn.Module,
                 widths: Sequence[int] = (32, 64, 128)) -> None:
        super().__init__()
        c1, c2, c3 = widths
        self.normalize = normalize
        self.conv1 = nn.Conv2d(in_channels, c1, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c1, c2, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c2)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(c2, c3, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(c3)
        self.relu3 = nn.ReLU()
        self.pool = pooling()
        self.fc = nn.Linear(c3, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        """Penultimate features ``(B, 128)``."""
        out = self.relu1(self.bn1(self.conv1(self.normalize(x))))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.relu3(self.bn3(self.conv3(out)))
        return self.pool(out)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.forward_features(x))


@architecture("small_cnn", "pool")
def small_cnn(num_classes: int, in_channels: int, first: nn.Module) -> nn.Module:
    """Small 3-stage CNN for tests and demos (any input size)."""
    return SmallCNN(num_classes, in_channels, first)
