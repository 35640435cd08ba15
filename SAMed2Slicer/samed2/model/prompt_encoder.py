"""SAM's prompt encoder: points, boxes and a mask prompt to sparse and dense embeddings."""
import math

import torch
from torch import nn

from samed2.model.building_blocks import LayerNorm2d, kept

# Point labels understood by the prompt encoder.
PAD, NEGATIVE, POSITIVE, BOX_TOP_LEFT, BOX_BOTTOM_RIGHT = -1, 0, 1, 2, 3


class PositionEmbeddingRandom(nn.Module):
    """Random Fourier features of normalised (x, y) coordinates."""

    def __init__(self, num_pos_feats: int):
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn(2, num_pos_feats))

    def encode(self, coords01: torch.Tensor) -> torch.Tensor:
        angles = 2 * math.pi * ((2 * coords01 - 1) @ self.positional_encoding_gaussian_matrix)
        return torch.cat([angles.sin(), angles.cos()], dim=-1)

    def grid(self, h: int, w: int) -> torch.Tensor:
        """(C, h, w) encoding of the pixel centres of an h x w grid."""
        device = self.positional_encoding_gaussian_matrix.device
        ones = torch.ones(h, w, device=device)
        y = (ones.cumsum(0) - 0.5) / h
        x = (ones.cumsum(1) - 0.5) / w
        return self.encode(torch.stack([x, y], dim=-1)).permute(2, 0, 1)


class PromptEncoder(nn.Module):
    def __init__(self, embed_dim: int, image_embedding_size: int, input_image_size: int, mask_in_chans: int = 16):
        super().__init__()
        self.embed_dim = embed_dim
        self.embedding_size = image_embedding_size
        self.input_size = input_image_size
        self.mask_input_size = (4 * image_embedding_size, 4 * image_embedding_size)
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(4))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            nn.GELU(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            nn.GELU(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def dense_pe(self) -> torch.Tensor:
        """(1, C, h, w) encoding of the image embedding's grid. Every click needs it and it depends only
        on the small Fourier matrix, so it is kept with a copy of the matrix it came from."""
        size = self.embedding_size
        return kept(self, "_kept_dense_pe", size, [self.pe_layer.positional_encoding_gaussian_matrix],
                    lambda: self.pe_layer.grid(size, size).unsqueeze(0))

    def _encode_coords(self, points: torch.Tensor) -> torch.Tensor:
        return self.pe_layer.encode((points + 0.5) / self.input_size)

    def embed_points(self, points: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        """points (B, N, 2) in input-image pixels, labels (B, N) -> (B, N[+1], C)."""
        if pad:
            points = torch.cat([points, points.new_zeros(points.shape[0], 1, 2)], dim=1)
            labels = torch.cat([labels, -labels.new_ones(labels.shape[0], 1)], dim=1)
        emb = self._encode_coords(points)
        labels = labels.unsqueeze(-1)
        emb = torch.where(labels == PAD, torch.zeros_like(emb) + self.not_a_point_embed.weight, emb)
        for value, table in enumerate(self.point_embeddings):
            emb = torch.where(labels == value, emb + table.weight, emb)
        return emb

    def embed_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        """boxes (B, 4) as x0, y0, x1, y1 in input-image pixels -> (B, 2, C)."""
        emb = self._encode_coords(boxes.reshape(-1, 2, 2))
        corner = torch.stack([self.point_embeddings[BOX_TOP_LEFT].weight[0],
                              self.point_embeddings[BOX_BOTTOM_RIGHT].weight[0]])
        return emb + corner

    def forward(self, points=None, boxes=None, masks=None, batch_size: int = 1):
        """Sparse (B, N, C) and dense (B, C, h, w) prompt embeddings."""
        if points is not None:
            batch_size = points[0].shape[0]
        elif boxes is not None:
            batch_size = boxes.shape[0]
        elif masks is not None:
            batch_size = masks.shape[0]
        weight = self.no_mask_embed.weight
        sparse = [weight.new_empty(batch_size, 0, self.embed_dim)]
        if points is not None:
            sparse.append(self.embed_points(*points, pad=boxes is None))
        if boxes is not None:
            sparse.append(self.embed_boxes(boxes))
        if masks is not None:
            dense = self.mask_downscaling(masks)
        else:
            dense = weight.reshape(1, -1, 1, 1).expand(batch_size, -1, self.embedding_size, self.embedding_size)
        return torch.cat(sparse, dim=1), dense
