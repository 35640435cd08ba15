"""SAM's mask decoder: a two-way transformer between prompt tokens and image features, then masks,
their IoU estimates and (SAM 2) an object score."""
import torch
from torch import nn

from samed2.model.attention import Attention
from samed2.model.building_blocks import MLP, LayerNorm2d, MLPBlock, upsample2x


class TwoWayAttentionBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_dim: int, downsample_rate: int, skip_first_layer_pe: bool,
                 sam1: bool = False):
        super().__init__()
        self.self_attn = Attention(dim, num_heads)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn_token_to_image = Attention(dim, num_heads, downsample_rate=downsample_rate)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLPBlock(dim, mlp_dim) if sam1 else MLP(dim, mlp_dim, dim, num_layers=2, activation=nn.ReLU)
        self.norm3 = nn.LayerNorm(dim)
        self.norm4 = nn.LayerNorm(dim)
        self.cross_attn_image_to_token = Attention(dim, num_heads, downsample_rate=downsample_rate)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(self, queries, keys, query_pe, key_pe, token_mask=None):
        """token_mask (B, N_tokens): tokens other tokens and the image may attend to (None: all)."""
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries, token_mask)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries, token_mask)
        queries = self.norm1(queries)
        k = keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(queries + query_pe, k, keys))
        queries = self.norm3(queries + self.mlp(queries))
        keys = self.norm4(keys + self.cross_attn_image_to_token(k, queries + query_pe, queries, token_mask))
        return queries, keys


class TwoWayTransformer(nn.Module):
    def __init__(self, depth: int, embedding_dim: int, num_heads: int, mlp_dim: int, downsample_rate: int = 2,
                 sam1: bool = False):
        super().__init__()
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(embedding_dim, num_heads, mlp_dim, downsample_rate, skip_first_layer_pe=i == 0,
                                 sam1=sam1)
            for i in range(depth))
        self.final_attn_token_to_image = Attention(embedding_dim, num_heads, downsample_rate=downsample_rate)
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def forward(self, image, image_pe, point_embedding, token_mask=None):
        keys = image.flatten(2).permute(0, 2, 1)
        key_pe = image_pe.flatten(2).permute(0, 2, 1)
        queries = point_embedding
        for layer in self.layers:
            queries, keys = layer(queries, keys, point_embedding, key_pe, token_mask)
        attn = self.final_attn_token_to_image(queries + point_embedding, keys + key_pe, keys)
        return self.norm_final_attn(queries + attn), keys


class MaskDecoder(nn.Module):
    """Predicts mask logits, IoU estimates, output tokens and an object score from prompt tokens.
    `sam1` builds SAM 1's layout (MedSAM-Lite): the same computation, other MLP key names."""

    def __init__(self, transformer_dim: int, num_multimask_outputs: int = 3, iou_head_depth: int = 3,
                 iou_head_hidden_dim: int = 256, use_high_res_features: bool = False,
                 iou_prediction_use_sigmoid: bool = False, pred_obj_scores: bool = False,
                 pred_obj_scores_mlp: bool = False, use_multimask_token_for_obj_ptr: bool = False,
                 dynamic_multimask_via_stability: bool = False, dynamic_multimask_stability_delta: float = 0.05,
                 dynamic_multimask_stability_thresh: float = 0.98, sam1: bool = False):
        super().__init__()
        c = transformer_dim
        self.transformer = TwoWayTransformer(depth=2, embedding_dim=c, num_heads=8, mlp_dim=2048, sam1=sam1)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.iou_token = nn.Embedding(1, c)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, c)
        self.pred_obj_scores = pred_obj_scores
        if pred_obj_scores:
            self.obj_score_token = nn.Embedding(1, c)
            self.pred_obj_score_head = MLP(c, c, 1, 3) if pred_obj_scores_mlp else nn.Linear(c, 1)
        self.use_multimask_token_for_obj_ptr = use_multimask_token_for_obj_ptr
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(c, c // 4, kernel_size=2, stride=2),
            LayerNorm2d(c // 4),
            nn.GELU(),
            nn.ConvTranspose2d(c // 4, c // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.use_high_res_features = use_high_res_features
        if use_high_res_features:
            self.conv_s0 = nn.Conv2d(c, c // 8, kernel_size=1)
            self.conv_s1 = nn.Conv2d(c, c // 4, kernel_size=1)
        self.output_hypernetworks_mlps = nn.ModuleList(MLP(c, c, c // 8, 3) for _ in range(self.num_mask_tokens))
        self.iou_prediction_head = MLP(c, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth,
                                       sigmoid_output=iou_prediction_use_sigmoid)
        self.dynamic_multimask = dynamic_multimask_via_stability
        self.stability_delta = dynamic_multimask_stability_delta
        self.stability_thresh = dynamic_multimask_stability_thresh

    def forward(self, image_embeddings, image_pe, sparse, dense, multimask_output, high_res_features=None,
                sparse_mask=None):
        """Returns masks (B, M, 4h, 4w), ious (B, M), output tokens (B, M', C), object score (B, 1).

        multimask_output is a bool, or a (B,) bool tensor choosing per row: then a single-output row
        repeats its one output in all M places (so the best of them is that output).
        sparse_mask (B, N) hides prompt tokens from attention (False = hidden).
        """
        masks, ious, mask_tokens, obj_score = self._predict(image_embeddings, image_pe, sparse, dense,
                                                           high_res_features, sparse_mask)
        if not torch.is_tensor(multimask_output):
            pick = self._multimask if multimask_output else self._single_mask
            return (*pick(masks, ious, mask_tokens), obj_score)
        rows = multimask_output
        both = zip(self._multimask(masks, ious, mask_tokens), self._single_mask(masks, ious, mask_tokens))
        return (*(torch.where(rows.reshape(-1, *[1] * (m.dim() - 1)), m, s) for m, s in both), obj_score)

    def _multimask(self, masks, ious, mask_tokens):
        tokens = mask_tokens[:, 1:] if self.use_multimask_token_for_obj_ptr else mask_tokens[:, :1]
        return masks[:, 1:], ious[:, 1:], tokens

    def _single_mask(self, masks, ious, mask_tokens):
        if self.dynamic_multimask and not self.training:
            return (*self._select_stable(masks, ious), mask_tokens[:, :1])
        return masks[:, :1], ious[:, :1], mask_tokens[:, :1]

    def _predict(self, image, image_pe, sparse, dense, high_res_features, sparse_mask=None):
        heads = [self.iou_token.weight, self.mask_tokens.weight]
        if self.pred_obj_scores:
            heads.insert(0, self.obj_score_token.weight)
        first = 1 if self.pred_obj_scores else 0
        tokens = torch.cat(heads, dim=0).unsqueeze(0).expand(sparse.shape[0], -1, -1)
        token_mask = None
        if sparse_mask is not None:
            token_mask = torch.cat([sparse_mask.new_ones(sparse.shape[0], tokens.shape[1]), sparse_mask], dim=1)
        tokens = torch.cat([tokens, sparse], dim=1)
        src = image + dense
        b, c, h, w = src.shape
        pos = image_pe.expand(b, -1, -1, -1)
        hs, src = self.transformer(src, pos, tokens, token_mask)
        iou_token = hs[:, first]
        mask_tokens = hs[:, first + 1: first + 1 + self.num_mask_tokens]
        upscaled = self._upscale(src.reshape(b, h, w, c), high_res_features)
        hyper = torch.stack([mlp(mask_tokens[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1)
        b, h, w, c = upscaled.shape
        masks = (hyper @ upscaled.reshape(b, h * w, c).transpose(1, 2)).reshape(b, -1, h, w)
        ious = self.iou_prediction_head(iou_token)
        if self.pred_obj_scores:
            obj_score = self.pred_obj_score_head(hs[:, 0])
        else:
            obj_score = 10.0 * ious.new_ones(ious.shape[0], 1)
        return masks, ious, mask_tokens, obj_score

    def _upscale(self, src, high_res_features):
        """`output_upscaling` (plus the high-resolution features) computed channels-last:
        (B, h, w, C) -> (B, 4h, 4w, C/8)."""
        up1, norm1, act1, up2, act2 = self.output_upscaling
        feat_s0, feat_s1 = high_res_features if self.use_high_res_features else (None, None)
        x = act1(norm1.channels_last(upsample2x(up1, src, feat_s1)))
        return act2(upsample2x(up2, x, feat_s0))

    def high_res_features(self, fpn_s0, fpn_s1) -> list:
        """The decoder's high-resolution inputs, stored channels-last (as `_upscale` reads them)."""
        return [conv(fpn).contiguous(memory_format=torch.channels_last)
                for conv, fpn in ((self.conv_s0, fpn_s0), (self.conv_s1, fpn_s1))]

    def _select_stable(self, masks, ious):
        """Keep the single-mask output when it is stable, else the best of the multimask outputs."""
        single, single_iou = masks[:, :1], ious[:, :1]
        best = torch.argmax(ious[:, 1:], dim=-1)
        rows = torch.arange(masks.shape[0], device=masks.device)
        best_masks = masks[:, 1:][rows, best].unsqueeze(1)
        best_ious = ious[:, 1:][rows, best].unsqueeze(1)
        flat = single.flatten(-2)
        inner = (flat > self.stability_delta).sum(-1).float()
        outer = (flat > -self.stability_delta).sum(-1).float()
        stable = torch.where(outer > 0, inner / outer, 1.0) >= self.stability_thresh
        return (torch.where(stable[..., None, None], single, best_masks),
                torch.where(stable, single_iou, best_ious))
