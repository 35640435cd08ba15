"""TinyViT, MedSAM-Lite's image encoder: a convolutional first stage, windowed-attention stages with a
learned relative-position bias, and SAM's neck. State dict keys follow the official layout (`c`/`bn`
convolution pairs, `layers.N.blocks.M`, `neck.N`) so the published checkpoint loads strictly.

Tensors between blocks are channels-last images (B, H, W, C).
"""
import torch
import torch.nn.functional as F
from torch import nn

from samed2.model.building_blocks import LayerNorm2d


class ConvBN(nn.Sequential):
    """A bias-free convolution followed by batch norm (keys `c` and `bn`)."""

    def __init__(self, in_chans: int, out_chans: int, kernel: int = 1, stride: int = 1, groups: int = 1):
        super().__init__()
        self.c = nn.Conv2d(in_chans, out_chans, kernel, stride, kernel // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_chans)


def channels_first(fn, x: torch.Tensor) -> torch.Tensor:
    """Apply a (B, C, H, W) module to a channels-last image."""
    return fn(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class MBConv(nn.Module):
    """Inverted residual: expand, depthwise 3x3, project, each with GELU, and the shortcut."""

    def __init__(self, dim: int, expand_ratio: float):
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = ConvBN(dim, hidden)
        self.conv2 = ConvBN(hidden, hidden, kernel=3, groups=hidden)
        self.conv3 = ConvBN(hidden, dim)

    def forward(self, x):  # (B, C, H, W)
        y = F.gelu(self.conv2(F.gelu(self.conv1(x))))
        return F.gelu(self.conv3(y) + x)


class PatchMerging(nn.Module):
    """1x1 projection, depthwise 3x3 with the stage's stride, 1x1 projection."""

    def __init__(self, dim: int, out_dim: int, stride: int):
        super().__init__()
        self.conv1 = ConvBN(dim, out_dim)
        self.conv2 = ConvBN(out_dim, out_dim, kernel=3, stride=stride, groups=out_dim)
        self.conv3 = ConvBN(out_dim, out_dim)

    def forward(self, x):  # (B, C, H, W)
        return self.conv3(F.gelu(self.conv2(F.gelu(self.conv1(x)))))


def offset_index(window: int) -> torch.Tensor:
    """(w*w, w*w) index into a window's bias table: |row offset| * w + |column offset|, which is the
    order in which the official code first meets each offset."""
    rows, cols = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    rows, cols = rows.flatten(), cols.flatten()
    return (rows[:, None] - rows[None]).abs() * window + (cols[:, None] - cols[None]).abs()


class WindowAttention(nn.Module):
    """Multi-head self-attention inside a window, with a learned bias per head and 2-D offset."""

    def __init__(self, dim: int, num_heads: int, window: int):
        super().__init__()
        self.num_heads = num_heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, window * window))
        self.register_buffer("bias_index", offset_index(window), persistent=False)

    def forward(self, x):  # (B, N, C)
        b, n, c = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, n, self.num_heads, 3, c // self.num_heads)
        q, k, v = qkv.permute(3, 0, 2, 1, 4)  # each (B, heads, N, d)
        bias = self.attention_biases[:, self.bias_index].to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class TinyViTBlock(nn.Module):
    """Windowed attention (windows zero-padded at the bottom and right), a depthwise 3x3 convolution,
    then an MLP."""

    def __init__(self, dim: int, num_heads: int, window: int, mlp_ratio: float, local_conv_size: int):
        super().__init__()
        self.window = window
        self.attn = WindowAttention(dim, num_heads, window)
        self.local_conv = ConvBN(dim, dim, kernel=local_conv_size, groups=dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential()
        self.mlp.norm, self.mlp.fc1, self.mlp.act, self.mlp.fc2 = (
            nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x):  # (B, H, W, C)
        x = x + self._windowed(x)
        x = channels_first(self.local_conv, x)
        return x + self.mlp(x)

    def _windowed(self, x):
        b, h, w, c = x.shape
        s = self.window
        if h == s and w == s:
            return self.attn(x.reshape(b, h * w, c)).reshape(b, h, w, c)
        pad_h, pad_w = -h % s, -w % s
        padded = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        nh, nw = (h + pad_h) // s, (w + pad_w) // s
        windows = padded.reshape(b, nh, s, nw, s, c).transpose(2, 3).reshape(b * nh * nw, s * s, c)
        out = self.attn(windows).reshape(b, nh, nw, s, s, c).transpose(2, 3).reshape(b, nh * s, nw * s, c)
        return out[:, :h, :w]


class Stage(nn.Module):
    """Blocks at one resolution, then an optional patch merging into the next stage's width."""

    def __init__(self, blocks: list, downsample=None):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample


class TinyViT(nn.Module):
    def __init__(self, embed_dims, depths, num_heads, window_sizes, merge_strides, mlp_ratio=4.0,
                 mbconv_expand_ratio=4.0, local_conv_size=3, in_chans=3, out_chans=256):
        super().__init__()
        first = embed_dims[0]
        self.patch_embed = nn.Module()
        self.patch_embed.seq = nn.Sequential(ConvBN(in_chans, first // 2), nn.GELU(), ConvBN(first // 2, first))
        self.layers = nn.ModuleList()
        for i, (dim, depth) in enumerate(zip(embed_dims, depths)):
            merge = None
            if i + 1 < len(embed_dims):
                merge = PatchMerging(dim, embed_dims[i + 1], merge_strides[i])
            if i == 0:
                blocks = [MBConv(dim, mbconv_expand_ratio) for _ in range(depth)]
            else:
                blocks = [TinyViTBlock(dim, num_heads[i], window_sizes[i], mlp_ratio, local_conv_size)
                          for _ in range(depth)]
            self.layers.append(Stage(blocks, merge))
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dims[-1], out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, out_chans, S/4, S/4) with the official strides."""
        x = self.patch_embed.seq(images)
        convolutional, *attention = self.layers
        for block in convolutional.blocks:
            x = block(x)
        x = convolutional.downsample(x).permute(0, 2, 3, 1)
        for stage in attention:
            for block in stage.blocks:
                x = block(x)
            if stage.downsample is not None:
                x = channels_first(stage.downsample, x)
        return self.neck(x.permute(0, 3, 1, 2))
