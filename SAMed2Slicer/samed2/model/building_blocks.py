"""Small building blocks shared by the encoders, the prompt encoder, the mask decoder and the memory
modules: MLPs, channel LayerNorm, sine position embeddings, 2x upsampling, and `kept` results."""
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
