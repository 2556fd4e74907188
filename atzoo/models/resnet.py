"""CIFAR ResNet-18 and PreAct ResNet-18.

He et al., "Deep Residual Learning for Image Recognition", CVPR 2016, and "Identity
Mappings in Deep Residual Networks", ECCV 2016, in the CIFAR form used by the TRADES,
MART, LBGAT and AR-AT experiments: a 3x3 stride-1 stem without max-pool, four stages of
two basic blocks (64, 128, 256, 512 channels), global average pooling and one linear
layer (11.17 M parameters at 10 classes).

Every ReLU site is its own ``nn.ReLU`` module (``relu1``/``relu2`` in each block), so
the block-output reading of AR-AT's "all ReLU outputs in layer4" is the tap pattern
``layer4.*relu*`` (tap set ``block_output``). AR-AT's default taps on ResNet-18 are those
of the official scripts (``official``): ``layer4.{0,1}.bn{1,2}``, each passed through ReLU
by the tap, so the second feature of a block is ``ReLU(bn2(conv2(.)))`` *before* the
shortcut add.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from atzoo.models.layers import architecture, pooling


def _conv3x3(in_planes: int, planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)


def _projection(in_planes: int, planes: int, stride: int, bn: bool) -> nn.Sequential:
    """1x1 shortcut when the shape changes (option B of He et al.); empty otherwise."""
    if stride == 1 and in_planes == planes:
        return nn.Sequential()
    layers: list[nn.Module] = [nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False)]
    if bn:
        layers.append(nn.BatchNorm2d(planes))
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    """Post-activation basic block: ``relu2(bn2(conv2(relu1(bn1(conv1(x))))) + shortcut(x))``."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _projection(in_planes, planes, stride, bn=True)
        self.relu2 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        # In place: the same sum as the official AR-AT model's out-of-place
        # ``out = out + _x`` (futakw/AR-AT models/cifar_resnet_split_bn.py:76), one
        # activation-sized allocation less per block and pass (BatchNorm's backward does not
        # need its output). A tap on ``bn2`` still gets bn2's own output, before the add, as
        # the official hook does: FeatureTaps computes the pooled feature inside the hook and
        # copies a raw (unpooled) map before this line can change it.
        out += self.shortcut(x)
        return self.relu2(out)


class PreActBlock(nn.Module):
    """Pre-activation basic block: ``conv2(relu2(bn2(conv1(relu1(bn1(x)))))) + shortcut``.

    The projection shortcut, where present, takes the activated input (as in He et al.
    2016b and the PreAct ResNet used by Rice et al. 2020).
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU()
        self.conv1 = _conv3x3(in_planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.conv2 = _conv3x3(planes, planes)
        self.shortcut = _projection(in_planes, planes, stride, bn=False)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(x))
        shortcut = self.shortcut(out) if len(self.shortcut) else x
        out = self.conv1(out)
        out = self.conv2(self.relu2(self.bn2(out)))
        out += shortcut  # in place: a convolution's backward does not need its output
        return out


class ResNet(nn.Module):
    """CIFAR ResNet: stem, four stages, pooling, linear head ``fc``.

    Args:
        block: :class:`BasicBlock` (post-activation) or :class:`PreActBlock`.
        num_blocks: blocks per stage.
        num_classes: outputs of ``fc``.
        in_channels: input image channels.
        normalize: the optional first layer (identity when off).
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[PreActBlock],
        num_blocks: Sequence[int],
        num_classes: int,
        in_channels: int,
        normalize: nn.Module,
    ) -> None:
        super().__init__()
        self.preact = block is PreActBlock
        self.normalize = normalize
        self.conv1 = _conv3x3(in_channels, 64)
        if not self.preact:  # a pre-activation network normalises at the start of each block
            self.bn1 = nn.BatchNorm2d(64)
            self.relu = nn.ReLU()
        planes, in_planes, stages = 64, 64, []
        for i, n in enumerate(num_blocks):
            stride = 1 if i == 0 else 2
            blocks = []
            for s in [stride] + [1] * (n - 1):
                blocks.append(block(in_planes, planes, s))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
            planes *= 2
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        if self.preact:  # final BN + ReLU after the last pre-activation block
            self.bn = nn.BatchNorm2d(in_planes)
            self.relu = nn.ReLU()
        self.pool = pooling()
        self.fc = nn.Linear(in_planes, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        """Penultimate features ``(B, 512)``."""
        out = self.conv1(self.normalize(x))
        if not self.preact:
            out = self.relu(self.bn1(out))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        if self.preact:
            out = self.relu(self.bn(out))
        return self.pool(out)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.forward_features(x))


#: AR-AT's ResNet-18 features as the official scripts tap them (scripts/ARAT/*resnet18.sh:
#: ``align_layers="layer4.0.bn1,layer4.0.bn2,layer4.1.bn1,layer4.1.bn2"``; the hook applies ReLU).
RESNET18_OFFICIAL_TAPS: tuple[str, ...] = ("layer4.0.bn1", "layer4.0.bn2", "layer4.1.bn1", "layer4.1.bn2")
#: The other reading of "all ReLU outputs in layer4": both ReLU modules of each block, the
#: second one being the block output after the shortcut add.
BLOCK_OUTPUT_TAPS: tuple[str, ...] = ("layer4.*relu*",)


@architecture("resnet18", *RESNET18_OFFICIAL_TAPS, tap_sets={"block_output": BLOCK_OUTPUT_TAPS})
def resnet18(num_classes: int, in_channels: int, first: nn.Module) -> nn.Module:
    """CIFAR ResNet-18 (He et al. 2016; 3x3 stride-1 stem, no max-pool)."""
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes, in_channels, first)


@architecture("preact_resnet18", *BLOCK_OUTPUT_TAPS)  # no official AR-AT taps: atzoo's choice
def preact_resnet18(num_classes: int, in_channels: int, first: nn.Module) -> nn.Module:
    """CIFAR PreAct ResNet-18 (He et al. 2016b; final BN + ReLU before pooling)."""
    return ResNet(PreActBlock, (2, 2, 2, 2), num_classes, in_channels, first)
