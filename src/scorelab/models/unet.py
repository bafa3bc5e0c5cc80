"""A compact noise-conditional U-Net for images: net(x [B, C, H, W], c [B]) -> [B, C, H, W].

The DDPM/NCSN++ layout, trimmed (Ho et al. 2020; Song et al. 2021): a Fourier embedding of c feeds every
residual block; residual blocks are GroupNorm -> SiLU -> 3x3 conv, twice, with the embedding added in between;
one resolution per entry of ``channel_mults``, halved by a stride-2 conv; self-attention at the lowest
resolution; skip connections concatenated on the way up. Upsampling resizes to the stored skip's exact size,
so odd sizes work (28 -> 14 -> 7 -> 4 on the way down, 4 -> 7 -> 14 -> 28 on the way up; 8 -> 4 -> 2).
A class-conditional U-Net (``num_classes`` = K > 0) adds a label embedding (K + 1 rows, the last the null
class) to the noise embedding, as the class-conditional ADM / classifier-free guidance models do (Dhariwal &
Nichol 2021; Ho & Salimans 2021).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .embedding import GaussianFourierEmbedding
from .mlp import check_num_classes, label_index


def _groups(channels: int, max_groups: int = 8) -> int:
    """The largest number of GroupNorm groups <= max_groups that divides ``channels``."""
    return math.gcd(channels, max_groups)


class ResBlock(nn.Module):
    """h = conv(SiLU(GN(x))) + Dense(emb);  out = skip(x) + conv(SiLU(GN(h)))."""

    def __init__(self, in_ch: int, out_ch: int, embed_dim: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(in_ch), in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(embed_dim, out_ch)
        self.norm2 = nn.GroupNorm(_groups(out_ch), out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(emb)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Single-head self-attention over the H*W positions, residual: x + proj(softmax(q k^T / sqrt(C)) v)."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, C, H * W).unbind(1)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return x + self.proj(out.transpose(1, 2).reshape(B, C, H, W))


class UNet(nn.Module):
    """net(x [B, in_channels, H, W], c [B]) -> same shape.

    in_channels: image channels; base_channels: width of the first level; channel_mults: width multiplier per
    resolution (one level each, halving the size between levels); num_res_blocks: residual blocks per level
    and direction; attn_at_lowest: self-attention in the bottleneck; embed_dim: size of the noise embedding;
    num_classes: K > 0 for a class-conditional net(x, c, y) (y None: the null class).
    """

    def __init__(self, in_channels: int = 1, base_channels: int = 32, channel_mults=(1, 2),
                 num_res_blocks: int = 1, attn_at_lowest: bool = True, embed_dim: int = 128, num_classes: int = 0):
        super().__init__()
        self.num_classes = check_num_classes(num_classes)
        for name, v in (("in_channels", in_channels), ("base_channels", base_channels),
                        ("num_res_blocks", num_res_blocks), ("embed_dim", embed_dim)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}.")
        mults = tuple(channel_mults)
        if not mults or any(not isinstance(m, int) or m < 1 for m in mults):
            raise ValueError(f"channel_mults must be a non-empty sequence of positive integers, got {channel_mults!r}.")
        self.in_channels = in_channels
        self.embed = nn.Sequential(GaussianFourierEmbedding(embed_dim, 16.0), nn.Linear(embed_dim, embed_dim),
                                   nn.SiLU(), nn.Linear(embed_dim, embed_dim))
        self.label = nn.Embedding(num_classes + 1, embed_dim) if num_classes else None
        widths = [base_channels * m for m in mults]
        self.conv_in = nn.Conv2d(in_channels, base_channels, 3, padding=1)

        self.down_blocks, self.downsample = nn.ModuleList(), nn.ModuleList()
        ch = base_channels
        for i, w in enumerate(widths):
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks):
                blocks.append(ResBlock(ch, w, embed_dim))
                ch = w
            self.down_blocks.append(blocks)
            if i < len(widths) - 1:
                self.downsample.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))

        self.mid1 = ResBlock(ch, ch, embed_dim)
        self.attn = SelfAttention(ch) if attn_at_lowest else nn.Identity()
        self.mid2 = ResBlock(ch, ch, embed_dim)

        self.up_blocks, self.upsample = nn.ModuleList(), nn.ModuleList()
        for i in reversed(range(len(widths))):
            w = widths[i]
            blocks = nn.ModuleList()
            for j in range(num_res_blocks):
                blocks.append(ResBlock(ch + (w if j == 0 else 0), w, embed_dim))
                ch = w
            self.up_blocks.append(blocks)
            if i > 0:
                self.upsample.append(nn.Conv2d(ch, ch, 3, padding=1))

        self.norm_out = nn.GroupNorm(_groups(ch), ch)
        self.conv_out = nn.Conv2d(ch, in_channels, 3, padding=1)

    def forward(self, x: torch.Tensor, c: torch.Tensor, y=None) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != self.in_channels:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"UNet was built for images [B, {self.in_channels}, H, W], got {shape}; "
                             "set in_channels to the number of image channels.")
        emb = self.embed(c)
        if self.label is not None:
            emb = emb + self.label(label_index(y, x.shape[0], self.num_classes, x.device)).to(emb.dtype)
        h = self.conv_in(x)
        skips = []
        for i, blocks in enumerate(self.down_blocks):
            for block in blocks:
                h = block(h, emb)
            skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
        h = self.mid2(self.attn(self.mid1(h, emb)), emb)
        for i, blocks in enumerate(self.up_blocks):
            skip = skips.pop()
            if i > 0:
                # nearest-neighbour to the skip's exact size, so odd sizes (7 -> 4 -> 7) line up
                h = self.upsample[i - 1](F.interpolate(h, size=skip.shape[-2:], mode="nearest"))
            h = torch.cat([h, skip], dim=1)
            for block in blocks:
                h = block(h, emb)
        return self.conv_out(F.silu(self.norm_out(h)))
