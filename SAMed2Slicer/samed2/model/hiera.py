"""Hiera trunk (windowed / global attention, query pooling) with SAMed-2's optional temporal adapter."""
import torch
import torch.nn.functional as F
from torch import nn

from samed2.model.building_blocks import MLP, kept


def window_partition(x: torch.Tensor, size: int):
    """(B, H, W, C) -> (B * windows, size, size, C), zero-padding H and W up to multiples of size."""
    b, h, w, c = x.shape
    pad_h, pad_w = (-h) % size, (-w) % size
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x.view(b, hp // size, size, wp // size, size, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, size, size, c), (hp, wp)


def window_unpartition(windows: torch.Tensor, size: int, padded_hw, hw):
    """Inverse of window_partition, dropping the padding."""
    hp, wp = padded_hw
    b = windows.shape[0] // ((hp // size) * (wp // size))
    x = windows.reshape(b, hp // size, wp // size, size, size, -1).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, hp, wp, -1)[:, : hw[0], : hw[1]]


def pool_nhwc(x: torch.Tensor, pool: nn.Module) -> torch.Tensor:
    return pool(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class TemporalAdapter(nn.Module):
    """SAMed-2's adapter: LayerNorm -> Linear(C, 32) -> Conv3d over T=2 -> GELU -> Linear(32, C).

    The token batch (B, H, W, C) is read as (B/2, T=2, H, W, C): consecutive batch items are one
    temporal pair. In windowed blocks those items are adjacent windows of the flattened
    (image, window) batch, which is how the released weights were trained.
    """

    def __init__(self, dim: int, channels: int = 32, frames: int = 2):
        super().__init__()
        self.frames = frames
        self.norm = nn.LayerNorm(dim)
        self.linear_down = nn.Linear(dim, channels)
        self.conv = nn.Conv3d(channels, channels, kernel_size=3, padding=1)
        self.linear_up = nn.Linear(channels, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        if b % self.frames:
            raise ValueError(f"the temporal adapter needs a batch divisible by {self.frames}, got {b}")
        y = self.linear_down(self.norm(x))
        y = y.reshape(b // self.frames, self.frames, h, w, -1).permute(0, 4, 1, 2, 3)
        y = F.gelu(self.conv(y))
        y = y.permute(0, 2, 3, 4, 1).reshape(b, h, w, -1)
        return self.linear_up(y)


class FusionBlock(nn.Module):
    """Parameters of SAMed-2's `fancy_fusion` module: present in its checkpoint, unused in its forward."""

    def __init__(self, dim: int):
        super().__init__()
        self.cross_attn = nn.MultiheadAttention(dim, num_heads=1, batch_first=True)
        self.norm = nn.LayerNorm(dim)


class MultiScaleAttention(nn.Module):
    def __init__(self, dim: int, dim_out: int, num_heads: int, q_pool: nn.Module = None):
        super().__init__()
        self.num_heads = num_heads
        self.q_pool = q_pool
        self.qkv = nn.Linear(dim, dim_out * 3)
        self.proj = nn.Linear(dim_out, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1).unbind(2)
        if self.q_pool is not None:
            q = pool_nhwc(q.reshape(b, h, w, -1), self.q_pool)
            h, w = q.shape[1:3]
            q = q.reshape(b, h * w, self.num_heads, -1)
        x = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.proj(x.transpose(1, 2).reshape(b, h, w, -1))


class MultiScaleBlock(nn.Module):
    def __init__(self, dim, dim_out, num_heads, window_size, q_stride=None, mlp_ratio=4.0,
                 adapter=False, fusion=False):
        super().__init__()
        self.dim, self.dim_out = dim, dim_out
        self.window_size = window_size
        self.q_stride = q_stride
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.pool = nn.MaxPool2d(kernel_size=q_stride, stride=q_stride) if q_stride else None
        self.attn = MultiScaleAttention(dim, dim_out, num_heads, q_pool=self.pool)
        self.norm2 = nn.LayerNorm(dim_out, eps=1e-6)
        self.mlp = MLP(dim_out, int(dim_out * mlp_ratio), dim_out, num_layers=2, activation=nn.GELU)
        if dim != dim_out:
            self.proj = nn.Linear(dim, dim_out)
        self.adapter = TemporalAdapter(dim_out) if adapter else None
        if fusion:
            self.fancy_fusion = FusionBlock(dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.dim != self.dim_out:
            shortcut = pool_nhwc(self.proj(x), self.pool) if self.pool else self.proj(x)
        window = self.window_size
        if window > 0:
            x, _ = window_partition(x, window)
        x = self.attn(x)
        if self.adapter is not None:
            x = x + self.adapter(x)
        if window > 0:
            if self.q_stride:
                window //= self.q_stride[0]
            h, w = shortcut.shape[1:3]
            padded = (h + (-h) % window, w + (-w) % window)
            x = window_unpartition(x, window, padded, (h, w))
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class Hiera(nn.Module):
    """Hierarchical ViT trunk returning one feature map per stage (highest resolution first)."""

    def __init__(self, embed_dim=96, num_heads=1, stages=(2, 3, 16, 3), q_pool=3, q_stride=(2, 2),
                 dim_mul=2.0, head_mul=2.0, window_pos_embed_bkg_spatial_size=(14, 14),
                 window_spec=(8, 4, 14, 7), global_att_blocks=(12, 16, 20),
                 temporal_adapter=False, fusion_blocks=False):
        super().__init__()
        self.stage_ends = [sum(stages[: i + 1]) - 1 for i in range(len(stages))]
        q_pool_blocks = [end + 1 for end in self.stage_ends[:-1]][:q_pool]
        self.patch_embed = PatchEmbed(embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, embed_dim, *window_pos_embed_bkg_spatial_size))
        self.pos_embed_window = nn.Parameter(torch.zeros(1, embed_dim, window_spec[0], window_spec[0]))
        self.blocks = nn.ModuleList()
        stage = 0
        for i in range(sum(stages)):
            dim_out = embed_dim
            # The first block of a stage still uses the previous stage's window size.
            window = 0 if i in global_att_blocks else window_spec[stage]
            if i - 1 in self.stage_ends:
                dim_out = int(embed_dim * dim_mul)
                num_heads = int(num_heads * head_mul)
                stage += 1
            self.blocks.append(MultiScaleBlock(
                embed_dim, dim_out, num_heads, window,
                q_stride=tuple(q_stride) if i in q_pool_blocks else None,
                adapter=temporal_adapter, fusion=fusion_blocks))
            embed_dim = dim_out
        self.channel_list = [self.blocks[i].dim_out for i in reversed(self.stage_ends)]
        self.needs_pairs = bool(temporal_adapter)

    def _pos_embed(self, h: int, w: int) -> torch.Tensor:
        """(1, h, w, C) position embedding. Without autograd it is kept for the next image (the bicubic
        resize costs 2 % of a 1024 px encoding), with copies of the parameters it came from."""
        return kept(self, "_kept_pos_embed", (h, w), (self.pos_embed, self.pos_embed_window),
                    lambda: self._resized_pos_embed(h, w))

    def _resized_pos_embed(self, h: int, w: int) -> torch.Tensor:
        pos = F.interpolate(self.pos_embed, size=(h, w), mode="bicubic")
        window = self.pos_embed_window
        pos = pos + window.tile([1, 1, h // window.shape[2], w // window.shape[3]])
        return pos.permute(0, 2, 3, 1)

    def forward(self, x: torch.Tensor):
        x = self.patch_embed(x)
        x = x + self._pos_embed(*x.shape[1:3])
        outputs = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.stage_ends:
                outputs.append(x.permute(0, 3, 1, 2))
        return outputs


class PatchEmbed(nn.Module):
    def __init__(self, embed_dim: int, in_chans: int = 3):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=7, stride=4, padding=3)

    def forward(self, x):
        return self.proj(x).permute(0, 2, 3, 1)
