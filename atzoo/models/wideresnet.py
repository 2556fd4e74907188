"""Wide ResNets WRN-34-10 and WRN-28-10 (ReLU), WRN-28-10 and WRN-70-16 with SiLU.

Zagoruyko and Komodakis, "Wide Residual Networks", BMVC 2016, in the form of the TRADES
and AR-AT official code: pre-activation blocks, three stages (``block1``-``block3``,
160/320/640 channels at width 10), a final ``bn1`` + ``relu``, global average pooling and
``fc``. Module names follow that code, so ``block3.layer.0.relu1`` is the same layer there.

The SiLU ("Swish") networks ``wrn28_10_silu`` and ``wrn70_16_silu`` are those of the
generated-data papers (Gowal et al. 2020/2021; Rebuffi et al. 2021; Wang et al. 2023, whose
``wrn-28-10-swish`` / ``wrn-70-16-swish`` come from the DeepMind model zoo,
deepmind-research ``adversarial_robustness/pytorch/model_zoo.py``): the same pre-activation
layout with ``nn.SiLU`` at every activation site, BatchNorm momentum 0.01 (Haiku's decay
0.99) and TensorFlow "SAME" padding of the stride-2 convolutions (one row and column of
zeros after the image, none before), which shifts their sampling grid by a pixel against
the symmetric padding of the TRADES code. Their input normalisation is atzoo's
``model.normalize=true`` (the recipes set it). The activation modules keep the names
``relu1``/``relu2``/``relu`` (the reference keeps ``relu_0`` for its Swish too), so AR-AT
taps and checkpoints address the same sites.

Deviation: the reference defines a fourth stage ``sub_block1`` that its forward pass never
uses; it is left out here (it would hold parameters that never receive a gradient and
would not match the stated 46.16 M parameters). Its checkpoints load with ``strict=False``.
"""

from __future__ import annotations

import math

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from atzoo.models.layers import architecture, pooling


@dataclass(frozen=True)
class WRNStyle:
    """What differs between the TRADES-code WRN (the default) and the DeepMind-zoo one."""

    activation: type[nn.Module] = nn.ReLU
    bn_momentum: float = 0.1
    same_padding: bool = False


#: The WRN of Gowal et al. and Wang et al. 2023 (see the module docstring).
SILU_STYLE = WRNStyle(activation=nn.SiLU, bn_momentum=0.01, same_padding=True)


class WideBasicBlock(nn.Module):
    """Pre-activation wide block (TRADES's ``BasicBlock``).

    When the shape changes, the activated input feeds both the residual branch and the
    1x1 projection shortcut; otherwise the raw input is the shortcut.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int, style: "WRNStyle | None" = None) -> None:
        super().__init__()
        style = style or WRNStyle()
        self.bn1 = nn.BatchNorm2d(in_planes, momentum=style.bn_momentum)
        self.relu1 = style.activation()
        # "SAME" padding at stride 2: pad (left 0, right 1, top 0, bottom 1) in forward, none in the conv.
        self.same_pad = style.same_padding and stride == 2
        self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=0 if self.same_pad else 1,
                               bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes, momentum=style.bn_momentum)
        self.relu2 = style.activation()
        self.conv2 = nn.Conv2d(out_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.equal_in_out = in_planes == out_planes
        self.convShortcut = (
            None if self.equal_in_out
            else nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, padding=0, bias=False)
        )

    def forward(self, x: Tensor) -> Tensor:
        act = self.relu1(self.bn1(x))
        branch = F.pad(act, (0, 1, 0, 1)) if self.same_pad else act
        out = self.conv2(self.relu2(self.bn2(self.conv1(branch))))
        out += x if self.convShortcut is None else self.convShortcut(act)  # in place: conv2 backward needs no output
        return out


class NetworkBlock(nn.Module):
    """One stage: ``n`` wide blocks, the first with ``stride`` (TRADES's ``NetworkBlock``)."""

    def __init__(self, n: int, in_planes: int, out_planes: int, stride: int, style: "WRNStyle | None" = None) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            WideBasicBlock(in_planes, out_planes, stride, style),
            *[WideBasicBlock(out_planes, out_planes, 1, style) for _ in range(n - 1)],
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-``depth``-``width`` for CIFAR.

    Args:
        depth: total depth; ``(depth - 4) / 6`` blocks per stage.
        width: widening factor.
        num_classes: outputs of ``fc``.
        in_channels: input image channels.
        normalize: the optional first layer (identity when off).
        style: activation, BN momentum and stride-2 padding (default: the TRADES code's).
    """

    def __init__(self, depth: int, width: int, num_classes: int, in_channels: int, normalize: nn.Module,
                 style: "WRNStyle | None" = None) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n + 4, got {depth}")
        n = (depth - 4) // 6
        channels = [16, 16 * width, 32 * width, 64 * width]
        self.normalize = normalize
        self.conv1 = nn.Conv2d(in_channels, channels[0], kernel_size=3, stride=1, padding=1, bias=False)
        style = style or WRNStyle()
        self.block1 = NetworkBlock(n, channels[0], channels[1], 1, style)
        self.block2 = NetworkBlock(n, channels[1], channels[2], 2, style)
        self.block3 = NetworkBlock(n, channels[2], channels[3], 2, style)
        self.bn1 = nn.BatchNorm2d(channels[3], momentum=style.bn_momentum)
        self.relu = style.activation()
        self.pool = pooling()
        self.fc = nn.Linear(channels[3], num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        """The reference initialisation: He-normal (fan-out) convs, unit BN, zero biases."""
        if self.fc.weight.is_meta:  # built only to count parameters: no values to initialise
            return
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        """Penultimate features ``(B, 64 * width)``."""
        out = self.block3(self.block2(self.block1(self.conv1(self.normalize(x)))))
        return self.pool(self.relu(self.bn1(out)))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.forward_features(x))


# a100_time_factor: AR-AT paper, Appendix A.2: about 10 h for WRN-34-10 vs 2 h for ResNet-18.
@architecture("wrn34_10", "block3.*relu*", "pool", family="wideresnet", gflops=13.32, a100_time_factor=5.0)
def wrn34_10(num_classes: int, in_channels: int, first: nn.Module) -> nn.Module:
    """WRN-34-10 (Zagoruyko and Komodakis 2016; TRADES/AR-AT layout)."""
    return WideResNet(34, 10, num_classes, in_channels, first)


# gflops: forward GFLOPs per 32x32 image counted with torch.utils.flop_counter (SiLU, like ReLU, uncounted)
@architecture("wrn28_10", "block3.*relu*", "pool", family="wideresnet", gflops=10.49)
def wrn28_10(num_classes: int, in_channels: int, first: nn.Module) -> nn.Module:
    """WRN-28-10 (Zagoruyko and Komodakis 2016; TRADES/AR-AT layout)."""
    return WideResNet(28, 10, num_classes, in_channels, first)


@architecture("wrn28_10_silu", "block3.*relu*", "pool", gflops=10.49)
def wrn28_10_silu(num_classes: int, in_channels: int, first: nn.Module) -> nn.Module:
    """WRN-28-10 with SiLU (Gowal et al. 2021; Wang et al. 2023's ``wrn-28-10-swish``)."""
    return WideResNet(28, 10, num_classes, in_channels, first, SILU_STYLE)


@architecture("wrn70_16_silu", "block3.*relu*", "pool", gflops=77.53)
def wrn70_16_silu(num_classes: int, in_channels: int, first: nn.Module) -> nn.Module:
    """WRN-70-16 with SiLU (Gowal et al. 2021; Wang et al. 2023's ``wrn-70-16-swish``), 267 M parameters."""
    return WideResNet(70, 16, num_classes, in_channels, first, SILU_STYLE)
