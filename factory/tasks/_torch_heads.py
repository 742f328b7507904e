"""The torch modules of the spatial tasks' heads, at module level so a pruned model (whose shapes no card
describes) can be pickled whole into the pruning cache. Imported only by the tasks' ``head()``: the
device side never imports torch, and task discovery skips this module."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["DetectionHead", "SoftArgmax"]


def _block(cin: int, cout: int) -> list:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class DetectionHead(nn.Module):
    """Upsample the backbone's features 4x, then one map per class and 4 box maps, all through a sigmoid,
    flattened."""

    def __init__(self, channels: int, classes: int):
        super().__init__()
        self.neck = nn.Sequential(
            nn.Conv2d(channels, 96, 1, bias=False), nn.BatchNorm2d(96), nn.ReLU(inplace=True),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False), *_block(96, 64),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False), *_block(64, 64),
        )  # fmt: skip
        self.out = nn.Conv2d(64, classes + 4, 1)
        with torch.no_grad():  # heatmaps start near 0.01 (focal loss's prior), sizes near a third of the frame
            self.out.bias[:classes] = -4.6
            self.out.bias[classes + 2 :] = -0.7

    def forward(self, x):
        return torch.sigmoid(self.out(self.neck(x))).flatten(1)


class SoftArgmax(nn.Module):
    """(N, 4, h, w) heatmaps -> (N, 8): each map's softmax-weighted mean position as fractions of the frame."""

    def __init__(self, h: int, w: int):
        super().__init__()
        ys, xs = torch.meshgrid((torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w, indexing="ij")
        self.register_buffer("grid", torch.stack([xs.reshape(-1), ys.reshape(-1)], 1))  # (h*w, 2)

    def forward(self, maps):
        p = torch.softmax(maps.flatten(2), dim=2)  # (N, 4, h*w)
        return torch.matmul(p, self.grid).flatten(1)  # (N, 8): x0, y0, ... x3, y3


def localisation_head(channels: int, fh: int, fw: int) -> nn.Sequential:
    """Four corner heatmaps at 4x the backbone's resolution, each turned into a point by :class:`SoftArgmax`."""
    return nn.Sequential(
        nn.Conv2d(channels, 64, 1, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(inplace=True),
        nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
        *_block(64, 64),
        nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
        *_block(64, 32),
        nn.Conv2d(32, 4, 1),
        SoftArgmax(4 * fh, 4 * fw),
    )
