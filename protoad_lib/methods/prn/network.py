"""PRN's segmentation network: multi-scale fusion of features and residuals, multi-size attention, U-Net decoder.

The structure follows `xcyao00/PRNet` (docs/peer_methods.md, "PRN"; paper Sec. 3.3-3.4):
1. multi-scale fusion (MSFF): every scale receives every other scale (coarser ones upsampled and
   projected by a 1x1 convolution, finer ones by a strided depthwise convolution) and adds them; one
   fusion module is shared by the features and the residuals, as PRNet;
2. per scale, the fused features and residuals are concatenated and passed through `attention_blocks`
   multi-size self-attention blocks (PRNet: 3): the map is cut into patches of size H, H/2, H/4,
   H/8, each patch one token, attention among the tokens of each size; the four outputs are
   concatenated and merged by a residual convolution block;
3. a second fusion, then a U-Net style decoder (upsample + conv, concatenation with the skip, two
   conv-BN-ReLU) up to the finest tapped scale, an upsampling to the input resolution, and a 3x3
   convolution to one logit channel.

Ours [ours]: the backbone's tapped layers (three: strides 4/8/16) are the scales, and the decoder starts
from the coarsest fused scale (PRNet starts from an extra, unfused ResNet layer 4); features and
residuals are first projected by a 1x1 convolution + BatchNorm to `width * 2^l` channels at scale l
(PRNet keeps ResNet18's 64/128/256), so a narrow network runs on a CPU; attention projections are
1x1 convolutions shared by all positions, scaled by 1/sqrt(token size) (PRNet: per-element depthwise
projections tied to one input size, scaled by 1/token size), so the network takes any input size;
maps are resized bilinearly to the exact size of the target scale (not by fixed factors).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

PATCH_DIVISORS = (1, 2, 4, 8)  # patch sizes H, H/2, H/4, H/8 of the multi-size attention


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


def resize(x: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Bilinear resize to `size` (a no-op when the size already matches)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class ResidualBlock(nn.Module):
    """Two 3x3 conv-BN (ReLU between), plus a 1x1 convolution shortcut, then ReLU (PRNet's block)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels),
        )
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


class ScaleFusion(nn.Module):
    """out_i = x_i + sum_{j != i} T_ij(x_j): coarser x_j 1x1-projected then upsampled (the same as PRNet's
    upsampling first: bilinear weights sum to 1), finer x_j through a strided depthwise convolution
    (kernel s + 1, stride s = stride_i / stride_j, groups gcd(C_j, C_i)), as PRNet's MSFF."""

    def __init__(self, channels: list[int], strides: list[int]) -> None:
        super().__init__()
        self.paths = nn.ModuleList()
        for i, (target, stride) in enumerate(zip(channels, strides)):
            row = nn.ModuleList()
            for j, (source, source_stride) in enumerate(zip(channels, strides)):
                if i == j:
                    row.append(nn.Identity())
                elif source_stride > stride:
                    row.append(nn.Conv2d(source, target, 1))
                else:
                    step = stride // source_stride
                    row.append(nn.Conv2d(source, target, step + 1, stride=step, padding=step // 2,
                                         groups=math.gcd(source, target)))
            self.paths.append(row)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        fused = []
        for i, row in enumerate(self.paths):
            size = xs[i].shape[-2:]
            fused.append(sum((resize(path(x), size) for j, (path, x) in enumerate(zip(row, xs)) if j != i), xs[i]))
        return fused


def patchify(x: torch.Tensor, patch: tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int]]:
    """[B, C, H, W] -> tokens [B, n_h * n_w, C * p_h * p_w] (zero-padded to whole patches), and (n_h, n_w)."""
    batch, channels, height, width = x.shape
    rows, cols = math.ceil(height / patch[0]), math.ceil(width / patch[1])
    x = F.pad(x, (0, cols * patch[1] - width, 0, rows * patch[0] - height))
    tokens = x.view(batch, channels, rows, patch[0], cols, patch[1]).permute(0, 2, 4, 1, 3, 5)
    return tokens.reshape(batch, rows * cols, -1), (rows, cols)


def unpatchify(tokens: torch.Tensor, grid: tuple[int, int], patch: tuple[int, int],
               size: tuple[int, int]) -> torch.Tensor:
    """The inverse of `patchify`, cropped back to `size`."""
    batch, rows, cols = tokens.shape[0], *grid
    x = tokens.view(batch, rows, cols, -1, patch[0], patch[1]).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(batch, -1, rows * patch[0], cols * patch[1])[:, :, : size[0], : size[1]]


class MultiSizeAttention(nn.Module):
    """Self-attention among patches of several sizes (H/d x W/d for d in `divisors`), outputs concatenated
    and merged by a `ResidualBlock` (PRNet's MSA; d = 1 makes one token, whose output is its value)."""

    def __init__(self, channels: int, divisors: tuple[int, ...] = PATCH_DIVISORS) -> None:
        super().__init__()
        self.divisors = tuple(divisors)
        self.qkv = nn.ModuleList(nn.Conv2d(channels, 3 * channels, 1) for _ in self.divisors)
        self.merge = ResidualBlock(len(self.divisors) * channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = tuple(x.shape[-2:])
        outputs = []
        for divisor, projection in zip(self.divisors, self.qkv):
            patch = (math.ceil(size[0] / divisor), math.ceil(size[1] / divisor))
            (q, grid), (k, _), (v, _) = (patchify(part, patch) for part in projection(x).chunk(3, dim=1))
            weights = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(q.shape[-1]), dim=-1)
            outputs.append(unpatchify(weights @ v, grid, patch, size))
        return self.merge(torch.cat(outputs, dim=1))


class PRNetwork(nn.Module):
    """Backbone maps + residuals (lists over the tapped layers) -> anomaly logit [B, 1, H, W] at the input
    resolution (the finest tapped map's size times its stride). See the module docstring."""

    def __init__(self, in_channels: list[int], strides: list[int], width: int = 16, attention_blocks: int = 1,
                 divisors: tuple[int, ...] = PATCH_DIVISORS) -> None:
        super().__init__()
        if width < 1 or attention_blocks < 0:
            raise ValueError("need width >= 1 and attention_blocks >= 0")
        widths = [width * 2**level for level in range(len(in_channels))]
        self.output_stride = strides[0]
        self.project_features = nn.ModuleList(self.projection(c, w) for c, w in zip(in_channels, widths))
        self.project_residuals = nn.ModuleList(self.projection(c, w) for c, w in zip(in_channels, widths))
        self.input_fusion = ScaleFusion(widths, strides)
        self.attention = nn.ModuleList(
            nn.Sequential(*(MultiSizeAttention(2 * w, divisors) for _ in range(attention_blocks))) for w in widths
        )
        self.context_fusion = ScaleFusion([2 * w for w in widths], strides)
        self.up = nn.ModuleList()
        self.merge = nn.ModuleList()
        deeper = 2 * widths[-1]
        for w in reversed(widths[:-1]):
            self.up.append(conv_bn_relu(deeper, w))
            self.merge.append(nn.Sequential(conv_bn_relu(3 * w, w), conv_bn_relu(w, w)))
            deeper = w
        self.to_input = conv_bn_relu(deeper, widths[0])
        self.logit = nn.Conv2d(widths[0], 1, 3, padding=1)

    @staticmethod
    def projection(in_channels: int, out_channels: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels))

    def forward(self, features: list[torch.Tensor], residuals: list[torch.Tensor]) -> torch.Tensor:
        features = self.input_fusion([p(f) for p, f in zip(self.project_features, features)])
        residuals = self.input_fusion([p(r) for p, r in zip(self.project_residuals, residuals)])
        joint = [block(torch.cat([f, r], dim=1)) for block, f, r in zip(self.attention, features, residuals)]
        skips = self.context_fusion(joint)
        x = skips[-1]
        for up, merge, skip in zip(self.up, self.merge, reversed(skips[:-1])):
            x = merge(torch.cat([skip, up(resize(x, skip.shape[-2:]))], dim=1))
        size = tuple(self.output_stride * s for s in x.shape[-2:])
        return self.logit(self.to_input(resize(x, size)))
