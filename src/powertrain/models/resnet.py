"""ResNet with basic blocks (He et al., 2016), sized for small images (1x28x28, 3x32x32) and 1-D signals.

    stem:   conv3x3(C -> widths[0]) -> BN -> ReLU            (no max-pool: the inputs are small)
    stages: blocks[i] basic blocks of width widths[i]; the first block of every stage after the
            first has stride 2, so 28x28 -> 14x14 -> 7x7 and 32x32 -> 16x16 -> 8x8
    head:   global average pool -> [dropout] -> Linear(widths[-1] -> outputs)

A basic block computes ReLU(BN(conv3x3(ReLU(BN(conv3x3(x))))) + shortcut(x)). The shortcut is the
identity, or a strided 1x1 conv + BN (the paper's "projection", option B) where the width or the
resolution changes. ResNet-20 of the paper's CIFAR-10 section is `widths: [16, 32, 64], blocks: [3, 3, 3]`.

>>> from powertrain import models
>>> from powertrain.data import DataMeta
>>> net = models.build({"name": "resnet", "widths": [16, 32, 64], "blocks": [3, 3, 3]}, DataMeta((3, 32, 32), "multiclass", 10))
>>> models.count_params(net)
272474
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from ..data.bundle import DataMeta
from ..recipe.registry import Options
from .registry import MODELS, output_size
from .check import ShapeError


class ResNetOptions(Options):
    widths: list[int] = [32, 64, 128]  # channels of each stage; stages after the first halve the resolution
    blocks: list[int] = [2, 2, 2]  # basic blocks per stage (two 3x3 convs each)
    dropout: float = Field(0.0, ge=0, lt=1)  # before the classifier
    zero_init_residual: bool = True  # each block's last BN starts at gamma=0, so every block starts as the identity

    @model_validator(mode="after")
    def _same_length(self):
        if not self.widths or len(self.widths) != len(self.blocks):
            raise ValueError(f"widths has {len(self.widths)} entries and blocks {len(self.blocks)}; give one of each per stage")
        if min(self.widths) < 1 or min(self.blocks) < 1:
            raise ValueError("widths and blocks must all be >= 1")
        return self


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, two_d: bool):
        super().__init__()
        Conv, Norm = (nn.Conv2d, nn.BatchNorm2d) if two_d else (nn.Conv1d, nn.BatchNorm1d)
        self.conv1 = Conv(c_in, c_out, 3, stride, 1, bias=False)  # BN follows: a bias would be redundant
        self.bn1 = Norm(c_out)
        self.conv2 = Conv(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = Norm(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(Conv(c_in, c_out, 1, stride, bias=False), Norm(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, c_in, H, W) -> (B, c_out, H/stride, W/stride)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, opts: ResNetOptions, in_channels: int, num_outputs: int, two_d: bool):
        super().__init__()
        Conv, Norm = (nn.Conv2d, nn.BatchNorm2d) if two_d else (nn.Conv1d, nn.BatchNorm1d)
        self.stem = nn.Sequential(Conv(in_channels, opts.widths[0], 3, 1, 1, bias=False), Norm(opts.widths[0]), nn.ReLU())
        blocks, c = [], opts.widths[0]
        for i, (width, n) in enumerate(zip(opts.widths, opts.blocks)):
            for j in range(n):
                blocks.append(BasicBlock(c, width, 2 if i > 0 and j == 0 else 1, two_d))
                c = width
        self.stages = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1) if two_d else nn.AdaptiveAvgPool1d(1)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(opts.dropout), nn.Linear(c, num_outputs))

        for m in self.modules():
            if isinstance(m, (nn.Conv1d, nn.Conv2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if opts.zero_init_residual:
            for b in blocks:
                nn.init.zeros_(b.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, outputs)
        return self.head(self.pool(self.stages(self.stem(x))))


@MODELS.register("resnet", ResNetOptions)
def build_resnet(opts: ResNetOptions, meta: DataMeta) -> nn.Module:
    """ResNet of basic blocks over (C, H, W) images or (C, L) signals."""
    if len(meta.input_shape) not in (2, 3):
        raise ShapeError(f"resnet: layer 'stem' needs samples shaped (C, H, W) or (C, L), but the data gives "
                         f"{tuple(meta.input_shape)}; use mlp for flat features")
    return ResNet(opts, meta.input_shape[0], output_size(meta), two_d=len(meta.input_shape) == 3)
