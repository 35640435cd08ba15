"""Memory encoder (mask + features -> memory) and RoPE memory attention (features <- memories)."""
import math

import torch
import torch.nn.functional as F
from torch import nn

from samed2.model.attention import RoPEAttention
from samed2.model.building_blocks import LayerNorm2d, PositionEmbeddingSine


class MaskDownSampler(nn.Module):
    """Strided convs taking a mask down by `total_stride`, channels growing by stride^2 each step."""

    def __init__(self, embed_dim=256, kernel_size=4, stride=4, padding=0, total_stride=16):
        super().__init__()
        steps = round(math.log(total_stride, stride))
        self.encoder = nn.Sequential()
        channels = 1
        for _ in range(steps):
            out = channels * stride ** 2
            self.encoder.append(nn.Conv2d(channels, out, kernel_size, stride, padding))
            self.encoder.append(LayerNorm2d(out))
            self.encoder.append(nn.GELU())
            channels = out
        self.encoder.append(nn.Conv2d(channels, embed_dim, kernel_size=1))

    def forward(self, x):
        return self.encoder(x)


class CXBlock(nn.Module):
    """ConvNeXt block: depth-wise conv, LayerNorm, pointwise MLP, layer scale, residual."""

    def __init__(self, dim, kernel_size=7, padding=3, layer_scale_init_value=1e-6, use_dwconv=True):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size, padding=padding, groups=dim if use_dwconv else 1)
        self.norm = LayerNorm2d(dim)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(layer_scale_init_value * torch.ones(dim)) if layer_scale_init_value > 0 else None

    def forward(self, x):
        y = self.norm(self.dwconv(x)).permute(0, 2, 3, 1)
        y = self.pwconv2(self.act(self.pwconv1(y)))
        if self.gamma is not None:
            y = self.gamma * y
        return x + y.permute(0, 3, 1, 2)


class Fuser(nn.Module):
    def __init__(self, layer: dict, num_layers: int):
        super().__init__()
        self.layers = nn.ModuleList(CXBlock(**layer) for _ in range(num_layers))

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


class MemoryEncoder(nn.Module):
    def __init__(self, out_dim, mask_downsampler: dict, fuser: dict, position_encoding: dict, in_dim=256):
        super().__init__()
        self.mask_downsampler = MaskDownSampler(**{"embed_dim": in_dim, **mask_downsampler})
        self.pix_feat_proj = nn.Conv2d(in_dim, in_dim, kernel_size=1)
        self.fuser = Fuser(**fuser)
        self.position_encoding = PositionEmbeddingSine(**position_encoding)
        self.out_proj = nn.Conv2d(in_dim, out_dim, kernel_size=1) if out_dim != in_dim else nn.Identity()

    def forward(self, pix_feat: torch.Tensor, mask_for_mem: torch.Tensor):
        """pix_feat (B, C, h, w) and a mask already mapped to memory scale (B, 1, S, S)."""
        x = self.pix_feat_proj(pix_feat) + self.mask_downsampler(mask_for_mem)
        x = self.out_proj(self.fuser(x))
        return x, self.position_encoding(x).to(x.dtype)


class MemoryAttentionLayer(nn.Module):
    def __init__(self, activation, cross_attention: dict, d_model, dim_feedforward, dropout, pos_enc_at_attn,
                 pos_enc_at_cross_attn_keys, pos_enc_at_cross_attn_queries, self_attention: dict):
        super().__init__()
        self.self_attn = RoPEAttention(**self_attention)
        self.cross_attn_image = RoPEAttention(**cross_attention)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)
        self.activation = {"relu": F.relu, "gelu": F.gelu}[activation]
        self.pos_at_attn = pos_enc_at_attn
        self.pos_at_keys = pos_enc_at_cross_attn_keys
        self.pos_at_queries = pos_enc_at_cross_attn_queries

    def forward(self, tgt, memory, pos, query_pos, num_k_exclude_rope=0):
        x = self.norm1(tgt)
        q = x + query_pos if self.pos_at_attn else x
        tgt = tgt + self.dropout1(self.self_attn(q, q, x))
        x = self.norm2(tgt)
        x = self.cross_attn_image(x + query_pos if self.pos_at_queries else x,
                                  memory + pos if self.pos_at_keys else memory,
                                  memory, num_k_exclude_rope=num_k_exclude_rope)
        tgt = tgt + self.dropout2(x)
        x = self.linear2(self.dropout(self.activation(self.linear1(self.norm3(tgt)))))
        return tgt + self.dropout3(x)


class MemoryAttention(nn.Module):
    """Conditions the current frame's features on memories; all tensors are batch-first (B, N, C)."""

    def __init__(self, d_model: int, pos_enc_at_input: bool, layer: dict, num_layers: int):
        super().__init__()
        self.layers = nn.ModuleList(MemoryAttentionLayer(**layer) for _ in range(num_layers))
        self.norm = nn.LayerNorm(d_model)
        self.pos_enc_at_input = pos_enc_at_input

    def forward(self, curr, curr_pos, memory, memory_pos, num_obj_ptr_tokens: int = 0):
        out = curr + 0.1 * curr_pos if self.pos_enc_at_input else curr
        for layer in self.layers:
            out = layer(out, memory, memory_pos, curr_pos, num_k_exclude_rope=num_obj_ptr_tokens)
        return self.norm(out)
