"""Building blocks shared by the encoder, the SAM heads and the memory modules."""
import math

import torch
import torch.nn.functional as F
from torch import nn


class MLP(nn.Module):
    """`num_layers` linear layers with an activation between them (`layers.N` keys)."""

    def __init__(self, in_dim, hidden_dim, out_dim, num_layers, activation=nn.ReLU, sigmoid_output=False):
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.act = activation()
        self.sigmoid_output = sigmoid_output

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = self.act(x)
        return torch.sigmoid(x) if self.sigmoid_output else x


class MLPBlock(nn.Module):
    """SAM 1's two-layer MLP in the two-way transformer (keys `lin1`, `lin2`; SAM 2 uses `MLP`)."""

    def __init__(self, dim: int, hidden_dim: int, activation=nn.ReLU):
        super().__init__()
        self.lin1 = nn.Linear(dim, hidden_dim)
        self.lin2 = nn.Linear(hidden_dim, dim)
        self.act = activation()

    def forward(self, x):
        return self.lin2(self.act(self.lin1(x)))


def kept(owner: nn.Module, name: str, key, sources, compute):
    """`compute()`, kept on `owner` as `name` and reused for the same `key` while the small tensors
    `sources` it derives from hold the same values (compared with copies). Under autograd, with
    sources that need gradients, it is computed afresh: a kept result would carry an old graph."""
    if torch.is_grad_enabled() and any(s.requires_grad for s in sources):
        return compute()
    held = getattr(owner, name, None)
    if held is None or held[0] != key or not all(
            a.device == b.device and torch.equal(a, b) for a, b in zip(held[1], sources)):
        held = key, [s.detach().clone() for s in sources], compute()
        setattr(owner, name, held)
    return held[2]


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of an (N, C, H, W) tensor."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def channels_last(self, x):
        """The same normalisation of a (N, H, W, C) map."""
        return F.layer_norm(x, (x.shape[-1],), self.weight, self.bias, self.eps)

    def forward(self, x):
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


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


class PositionEmbeddingSine(nn.Module):
    """The normalised 2-D sine/cosine position encoding of DETR, cached per feature size."""

    def __init__(self, num_pos_feats, temperature=10000, normalize=True, scale=None):
        super().__init__()
        self.half = num_pos_feats // 2
        self.temperature = temperature
        self.normalize = normalize
        self.scale = 2 * math.pi if scale is None else scale
        self._cache = {}

    def _encode(self, h: int, w: int) -> torch.Tensor:
        y = torch.arange(1, h + 1, dtype=torch.float32)[:, None].expand(h, w)
        x = torch.arange(1, w + 1, dtype=torch.float32)[None, :].expand(h, w)
        if self.normalize:
            y = y / (h + 1e-6) * self.scale
            x = x / (w + 1e-6) * self.scale
        dim_t = torch.arange(self.half, dtype=torch.float32)
        dim_t = self.temperature ** (2 * (dim_t // 2) / self.half)
        px, py = x[..., None] / dim_t, y[..., None] / dim_t
        px = torch.stack((px[..., 0::2].sin(), px[..., 1::2].cos()), dim=3).flatten(2)
        py = torch.stack((py[..., 0::2].sin(), py[..., 1::2].cos()), dim=3).flatten(2)
        return torch.cat((py, px), dim=2).permute(2, 0, 1)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        key = (x.shape[-2], x.shape[-1])
        if key not in self._cache:
            self._cache[key] = self._encode(*key)
        pe = self._cache[key].to(device=x.device, dtype=x.dtype)
        return pe[None].expand(x.shape[0], -1, -1, -1)


def sine_1d(positions: torch.Tensor, dim: int, temperature: float = 10000) -> torch.Tensor:
    """1-D sine/cosine encoding of (fractional) positions: (N,) -> (N, dim)."""
    half = dim // 2
    dim_t = torch.arange(half, dtype=torch.float32, device=positions.device)
    dim_t = temperature ** (2 * (dim_t // 2) / half)
    angles = positions.unsqueeze(-1) / dim_t
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def upsample2x(conv: nn.ConvTranspose2d, x: torch.Tensor, skip=None) -> torch.Tensor:
    """`conv(x) + skip` for a transposed convolution with kernel 2 and stride 2, channels-last:
    x (B, h, w, C) -> (B, 2h, 2w, C_out); skip is an optional (B, C_out, 2h, 2w) map stored
    channels-last. One matrix product (each input pixel becomes a 2 x 2 block), then the pixels
    are interleaved while adding `skip`; several times faster than the CPU's channels-first
    transposed-convolution kernel at the mask decoder's sizes."""
    b, h, w, c = x.shape
    out = conv.weight.shape[1]
    weight = conv.weight.permute(0, 2, 3, 1).reshape(c, 4 * out)  # columns: (dy, dx, out)
    blocks = torch.addmm(conv.bias.repeat(4), x.reshape(b * h * w, c), weight)
    blocks = blocks.reshape(b, h, w, 2, 2, out).transpose(2, 3)  # (B, h, dy, w, dx, C_out)
    if skip is None:
        return blocks.reshape(b, 2 * h, 2 * w, out)
    return (skip.permute(0, 2, 3, 1).reshape(blocks.shape) + blocks).reshape(b, 2 * h, 2 * w, out)
