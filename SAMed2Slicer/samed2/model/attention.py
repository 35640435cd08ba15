"""Multi-head attention (SAM's, with optional channel downsampling), blocked for long sequences on
CPU, and its rotary-position (RoPE) variant used by SAM 2's memory attention."""
import math

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    """Multi-head attention with separate q/k/v projections and optional channel downsampling."""

    def __init__(self, embedding_dim, num_heads, downsample_rate=1, dropout=0.0, kv_in_dim=None):
        super().__init__()
        kv_in_dim = kv_in_dim or embedding_dim
        self.internal_dim = embedding_dim // downsample_rate
        self.num_heads = num_heads
        self.q_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.k_proj = nn.Linear(kv_in_dim, self.internal_dim)
        self.v_proj = nn.Linear(kv_in_dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, embedding_dim)
        self.dropout_p = dropout

    def _heads(self, x):
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def _attend(self, q, k, v, key_mask=None):
        mask = None if key_mask is None else key_mask[:, None, None, :]  # (B, Nk) True = attended
        dropout = self.dropout_p if self.training else 0.0
        if q.dtype == torch.bfloat16 and q.device.type == "cpu" and mask is None and not dropout:
            out = blocked_attention(q, k, v)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        b, h, n, c = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, h * c))

    def forward(self, q, k, v, key_mask=None):
        if not (self.training and self.dropout_p > 0):
            if self._few(q) and self._many(k):
                return self._few_to_many(q, k, v)
            if self._few(k) and self._many(q):
                return self._many_to_few(q, k, v, key_mask)
        return self._attend(self._heads(self.q_proj(q)), self._heads(self.k_proj(k)), self._heads(self.v_proj(v)),
                            key_mask)

    # The mask decoder's cross attentions join a few prompt tokens with thousands of image tokens.
    # Folding the few side's projected heads into the weights of the many side's projections replaces
    # the projections of every image token (N x C x C/2) by products with H x n columns (H heads, n
    # tokens), about half the work for a click, with the same result up to rounding. Key masks only
    # ever hide prompt tokens, which are the few side.

    def _few(self, x) -> bool:
        return x.shape[1] * self.num_heads < self.internal_dim

    def _many(self, x) -> bool:
        return x.shape[1] > self.internal_dim

    def _head_weights(self, linear: nn.Linear) -> torch.Tensor:
        """(H, head dim, C_in) view of a projection into the heads."""
        return linear.weight.reshape(self.num_heads, -1, linear.weight.shape[1])

    def _few_to_many(self, q, k, v):
        """Few queries (B, n, C) attending to many keys and values (B, N, C)."""
        n = q.shape[1]
        heads = self._heads(self.q_proj(q))  # (B, H, n, d)
        # q . (W_k x + b_k) = (W_k^T q) . x + q . b_k; the second term is the same for every key
        # of a query, and softmax ignores it.
        folded = torch.einsum("bhnd,hdc->bhnc", heads, self._head_weights(self.k_proj))
        scores = folded.flatten(1, 2) @ k.transpose(1, 2) * heads.shape[-1] ** -0.5  # (B, H*n, N)
        attended = (torch.softmax(scores, dim=-1) @ v).unflatten(1, (self.num_heads, n))  # (B, H, n, C)
        # weights sum to one, so A (W_v x + b_v) = W_v (A x) + b_v
        values = torch.einsum("bhnc,hdc->bnhd", attended, self._head_weights(self.v_proj)).flatten(2)
        return self.out_proj(values + self.v_proj.bias)

    def _many_to_few(self, q, k, v, key_mask=None):
        """Many queries (B, N, C) attending to few keys and values (B, n, C); key_mask (B, n)."""
        b, n, _ = k.shape
        keys = self.k_proj(k).unflatten(2, (self.num_heads, -1))  # (B, n, H, d)
        folded = torch.einsum("bnhd,hdc->bchn", keys, self._head_weights(self.q_proj)).flatten(2)  # (B, C, H*n)
        bias = torch.einsum("hd,bnhd->bhn", self.q_proj.bias.unflatten(0, (self.num_heads, -1)), keys)
        scores = torch.baddbmm(bias.flatten(1)[:, None], q, folded) * keys.shape[-1] ** -0.5  # (B, N, H*n)
        scores = scores.unflatten(2, (self.num_heads, n))
        if key_mask is not None:
            scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
        weights = torch.softmax(scores, dim=-1).flatten(2)
        values = self.v_proj(v).unflatten(2, (self.num_heads, -1))  # (B, n, H, d)
        out_weight = self.out_proj.weight.unflatten(1, (self.num_heads, -1))  # (C_out, H, d)
        projected = torch.einsum("bnhd,ohd->bhno", values, out_weight).flatten(1, 2)  # (B, H*n, C_out)
        return torch.baddbmm(self.out_proj.bias.expand(b, 1, -1), weights, projected)


def blocked_attention(q, k, v, rows: int = 512):
    """Softmax attention for `rows` queries at a time, in q's precision. For bfloat16 on CPUs, where
    torch's flash kernel is no faster than in float32: memory attention's cross attention at 1024 px
    (4096 queries, 7 x 4096 keys) measured 0.97 s this way, 1.36 s with the flash kernel."""
    keys = k.transpose(-1, -2) * q.shape[-1] ** -0.5
    return torch.cat([torch.softmax(q[..., start: start + rows, :] @ keys, dim=-1, dtype=q.dtype) @ v
                      for start in range(0, q.shape[-2], rows)], dim=-2)


def axial_rope_angles(dim: int, width: int, height: int, theta: float) -> torch.Tensor:
    """Rotation angles (tokens, dim/2) of 2-D axial RoPE on a row-major width x height grid."""
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 4)[: dim // 4].float() / dim))
    t = torch.arange(width * height, dtype=torch.float32)
    x, y = t % width, torch.div(t, width, rounding_mode="floor")
    return torch.cat([torch.outer(x, freqs), torch.outer(y, freqs)], dim=-1)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive channel pairs of x (..., tokens, dim) by the given angles."""
    pairs = x.float().reshape(*x.shape[:-1], -1, 2)
    real, imag = pairs[..., 0], pairs[..., 1]
    out = torch.stack((real * cos - imag * sin, real * sin + imag * cos), dim=-1)
    return out.flatten(-2).type_as(x)


class RoPEAttention(Attention):
    """Attention with 2-D axial rotary position encoding (memory attention)."""

    def __init__(self, *args, rope_theta=10000.0, rope_k_repeat=False, feat_sizes=(64, 64), **kwargs):
        super().__init__(*args, **kwargs)
        self.rope_theta = rope_theta
        self.rope_k_repeat = rope_k_repeat
        self._angles = {}

    def _cos_sin(self, tokens: int, device):
        if tokens not in self._angles:
            side = int(math.isqrt(tokens))
            if side * side != tokens:
                raise ValueError(f"RoPE attention needs a square feature map, got {tokens} tokens")
            angles = axial_rope_angles(self.internal_dim // self.num_heads, side, side, self.rope_theta)
            self._angles[tokens] = (angles.cos(), angles.sin())
        cos, sin = self._angles[tokens]
        return cos.to(device), sin.to(device)

    def forward(self, q, k, v, num_k_exclude_rope: int = 0):
        q, k, v = self._heads(self.q_proj(q)), self._heads(self.k_proj(k)), self._heads(self.v_proj(v))
        cos, sin = self._cos_sin(q.shape[-2], q.device)
        q = rotate(q, cos, sin)
        num_k_rope = k.shape[-2] - num_k_exclude_rope
        if num_k_rope > 0:
            repeat = num_k_rope // q.shape[-2]
            if repeat != 1 and not self.rope_k_repeat:
                raise ValueError("keys and queries differ in length but rope_k_repeat is off")
            k_rope = rotate(k[:, :, :num_k_rope], cos.repeat(repeat, 1), sin.repeat(repeat, 1))
            k = torch.cat([k_rope, k[:, :, num_k_rope:]], dim=2)
        return self._attend(q, k, v)
