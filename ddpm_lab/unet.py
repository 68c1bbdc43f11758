"""The DDPM U-Net (Ho et al. 2020, Sec. 4 and App. B), as in their CIFAR-10 model: a PixelCNN++-style U-Net
with wide ResNet blocks, GroupNorm, Swish, a sinusoidal time embedding added in every block, and
self-attention at 16x16. The ``cifar10`` preset has the paper's 35.7M parameters; smaller presets share the code.

Attention uses ``torch.nn.functional.scaled_dot_product_attention`` (flash / memory-efficient kernels on CUDA).
The model runs in channels_last and under bf16 autocast; GroupNorm and the softmax are autocast-safe.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .toy import sinusoidal_embedding

__all__ = ["UNetConfig", "PRESETS", "UNet", "count_parameters"]


@dataclass(frozen=True)
class UNetConfig:
    """Architecture hyperparameters; ``PRESETS['cifar10']`` is the paper's CIFAR-10 model."""

    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.1
    resolution: int = 32
    in_ch: int = 3
    norm_groups: int = 32


PRESETS: dict[str, UNetConfig] = {
    "cifar10": UNetConfig(),
    "small": UNetConfig(ch=64, ch_mult=(1, 2, 2), num_res_blocks=1, dropout=0.1),
    "tiny": UNetConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(16,), dropout=0.0, norm_groups=8),
    # scikit-learn's 8x8 digits (ddpm_lab.digits): one channel, no attention but the 4x4 middle block's
    "digits": UNetConfig(ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), dropout=0.0, resolution=8,
                         in_ch=1, norm_groups=8),
}


def _is_int(t: torch.Tensor) -> bool:
    return not (t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool)


def _zero(module: nn.Module) -> nn.Module:
    """Zero-initialise the last layer of a residual branch (the official model's init_scale=0): each block
    starts as the identity."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """GroupNorm -> Swish -> conv3x3 -> + Dense(Swish(temb)) -> GroupNorm -> Swish -> dropout -> conv3x3, plus a
    1x1 shortcut when the channel count changes."""

    def __init__(self, in_ch: int, out_ch: int, temb_ch: int, dropout: float, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.temb_proj = nn.Linear(temb_ch, out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the H*W positions, with a residual connection."""

    def __init__(self, ch: int, groups: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = _zero(nn.Conv2d(ch, ch, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, C, H * W).transpose(-1, -2).unbind(1)  # (B, HW, C) each
        h = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]  # softmax(q k^T / sqrt(C)) v
        return x + self.proj(h.transpose(-1, -2).reshape(B, C, H, W))


class Downsample(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNet(nn.Module):
    """eps_theta(x_t, t): images (B, C, H, W) in [-1, 1] scale and timesteps t (B,), the paper's 1..T -> predicted noise."""

    def __init__(self, cfg: UNetConfig = UNetConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        ch, g = cfg.ch, cfg.norm_groups
        temb_ch = 4 * ch
        self.temb = nn.Sequential(nn.Linear(ch, temb_ch), nn.SiLU(), nn.Linear(temb_ch, temb_ch))
        self.conv_in = nn.Conv2d(cfg.in_ch, ch, 3, padding=1)

        self.down = nn.ModuleList()
        skip_chs = [ch]
        cur, res = ch, cfg.resolution
        for level, mult in enumerate(cfg.ch_mult):
            for _ in range(cfg.num_res_blocks):
                blocks = nn.ModuleList([ResBlock(cur, ch * mult, temb_ch, cfg.dropout, g)])
                cur = ch * mult
                if res in cfg.attn_resolutions:
                    blocks.append(AttnBlock(cur, g))
                self.down.append(blocks)
                skip_chs.append(cur)
            if level != len(cfg.ch_mult) - 1:
                self.down.append(nn.ModuleList([Downsample(cur)]))
                skip_chs.append(cur)
                res //= 2

        self.mid = nn.ModuleList([ResBlock(cur, cur, temb_ch, cfg.dropout, g), AttnBlock(cur, g),
                                  ResBlock(cur, cur, temb_ch, cfg.dropout, g)])

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.ch_mult))):
            for _ in range(cfg.num_res_blocks + 1):
                blocks = nn.ModuleList([ResBlock(cur + skip_chs.pop(), ch * mult, temb_ch, cfg.dropout, g)])
                cur = ch * mult
                if res in cfg.attn_resolutions:
                    blocks.append(AttnBlock(cur, g))
                self.up.append(blocks)
            if level != 0:
                self.up.append(nn.ModuleList([Upsample(cur)]))
                res *= 2

        self.norm_out = nn.GroupNorm(g, cur)
        self.conv_out = _zero(nn.Conv2d(cur, cfg.in_ch, 3, padding=1))

    @staticmethod
    def _run(blocks: nn.Module, h: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        for block in blocks.children():
            h = block(h, temb) if isinstance(block, ResBlock) else block(h)
        return h

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        # Shapes and dtypes only (no host sync: this runs in every CUDA training step); t's range is the caller's.
        c, r = self.cfg.in_ch, self.cfg.resolution
        if x.ndim != 4 or tuple(x.shape[1:]) != (c, r, r) or not x.dtype.is_floating_point:
            raise ValueError(f"expected images (B, {c}, {r}, {r}), floats in [-1, 1], got {tuple(x.shape)} {x.dtype}")
        if not isinstance(t, torch.Tensor) or t.shape != (x.shape[0],) or not _is_int(t):
            got = f"{tuple(t.shape)} {t.dtype}" if isinstance(t, torch.Tensor) else repr(t)
            raise ValueError(f"expected integer timesteps t of shape ({x.shape[0]},), one per image, got {got}")
        temb = self.temb(sinusoidal_embedding(t, self.cfg.ch).to(x.dtype))
        hs = [self.conv_in(x)]
        for blocks in self.down:
            hs.append(self._run(blocks, hs[-1], temb))
        h = self._run(self.mid, hs[-1], temb)
        for blocks in self.up:
            if isinstance(next(blocks.children()), ResBlock):  # a resolution's blocks take a skip connection
                h = torch.cat([h, hs.pop()], dim=1)
            h = self._run(blocks, h, temb)
        return self.conv_out(F.silu(self.norm_out(h)))


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


if __name__ == "__main__":  # python -m ddpm_lab.unet: parameter counts of the presets
    for name, preset in PRESETS.items():
        print(f"{name:>8}: {count_parameters(UNet(preset)) / 1e6:.2f}M parameters")
