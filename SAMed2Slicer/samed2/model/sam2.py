"""SAM 2 / SAMed-2 as one module: image encoding, prompt decoding, memory and the tracking step.

Tensors are kept image-shaped (B, C, H, W) or batch-first token sequences (B, N, C); state
dict keys follow the official layout so official checkpoints load strictly.
"""
from dataclasses import dataclass, fields
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from samed2.model.building_blocks import MLP, sine_1d
from samed2.model.image_encoder import ImageEncoder
from samed2.model.mask_decoder import MaskDecoder
from samed2.model.memory import MemoryAttention, MemoryEncoder
from samed2.model.prompt_encoder import PromptEncoder

NO_OBJECT_SCORE = -1024.0  # mask logit written where the object is predicted absent


@dataclass
class ImageFeatures:
    """Encoder output for a batch of images: stride-4 and stride-8 skips, stride-16 features."""

    high_res: list  # [(B, C/8, 4h, 4w), (B, C/4, 2h, 2w)]
    features: torch.Tensor  # (B, C, h, w)
    pos: torch.Tensor  # (B, C, h, w)

    def select(self, index) -> "ImageFeatures":
        return ImageFeatures([x[index] for x in self.high_res], self.features[index], self.pos[index])

    def to(self, **kwargs) -> "ImageFeatures":
        return ImageFeatures([x.to(**kwargs) for x in self.high_res], self.features.to(**kwargs),
                             self.pos.to(**kwargs))

    def expand(self, n: int) -> "ImageFeatures":
        """One image's features as a batch of n (views, no copies)."""
        return ImageFeatures([x.expand(n, -1, -1, -1) for x in self.high_res], self.features.expand(n, -1, -1, -1),
                             self.pos.expand(n, -1, -1, -1))


@dataclass
class Prediction:
    """Decoder output for a batch of prompts."""

    low_res_multimasks: torch.Tensor  # (B, M, 4h, 4w) logits
    ious: torch.Tensor  # (B, M)
    low_res_masks: torch.Tensor  # (B, 1, 4h, 4w) the best of the M
    obj_ptr: torch.Tensor  # (B, C)
    object_score_logits: torch.Tensor  # (B, 1)
    high_res_masks: Optional[torch.Tensor] = None  # (B, 1, S, S) when not just an upsampling

    def select(self, rows) -> "Prediction":
        return _select_rows(self, rows)

    @staticmethod
    def cat(predictions: List["Prediction"]) -> "Prediction":
        """Several predictions as one batch (a field None in the first is None in all)."""
        values = ([getattr(p, f.name) for p in predictions] for f in fields(Prediction))
        return Prediction(*(None if v[0] is None else torch.cat(v) for v in values))


@dataclass
class FrameMemory:
    """What a tracked frame leaves for later frames."""

    features: torch.Tensor  # (B, C_mem, h, w)
    pos: torch.Tensor  # (B, C_mem, h, w)
    obj_ptr: torch.Tensor  # (B, C)

    def stored(self) -> "FrameMemory":
        """The compact form kept between frames: features in bfloat16, as SAM 2's video predictor keeps them."""
        return FrameMemory(self.features.to(torch.bfloat16), self.pos, self.obj_ptr)

    def select(self, rows) -> "FrameMemory":
        return _select_rows(self, rows)

    @staticmethod
    def cat(memories: List["FrameMemory"]) -> "FrameMemory":
        """Several objects' memories of one frame as one batch."""
        return FrameMemory(*(torch.cat([getattr(m, f.name) for m in memories]) for f in fields(FrameMemory)))


def _select_rows(batch, rows):
    """A batch dataclass cut to some of its rows (a slice keeps the batch dimension)."""
    values = (getattr(batch, f.name) for f in fields(batch))
    return type(batch)(*(None if x is None else x[rows] for x in values))


class SAM2Model(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        self.cfg = cfg
        self.image_size = cfg["image_size"]
        self.image_encoder = ImageEncoder(**_strip(cfg["image_encoder"]))
        self.memory_attention = MemoryAttention(**_strip(cfg["memory_attention"]))
        self.memory_encoder = MemoryEncoder(**_strip(cfg["memory_encoder"]))
        self.hidden_dim = self.image_encoder.neck.d_model
        self.mem_dim = cfg["memory_encoder"]["out_dim"]
        self.num_maskmem = cfg.get("num_maskmem", 7)
        self.embedding_size = self.image_size // cfg.get("backbone_stride", 16)
        self._read_options(cfg)
        c, m = self.hidden_dim, self.mem_dim
        self.maskmem_tpos_enc = nn.Parameter(torch.zeros(self.num_maskmem, 1, 1, m))
        self.no_mem_embed = nn.Parameter(torch.zeros(1, 1, c))
        self.no_mem_pos_enc = nn.Parameter(torch.zeros(1, 1, c))
        if self.use_obj_ptrs:
            self.mask_downsample = nn.Conv2d(1, 1, kernel_size=4, stride=4)
        if self.pred_obj_scores and self.use_obj_ptrs:
            self.no_obj_ptr = nn.Parameter(torch.zeros(1, c))
        if cfg.get("no_obj_embed_spatial", False):
            self.no_obj_embed_spatial = nn.Parameter(torch.zeros(1, m))
        else:
            self.no_obj_embed_spatial = None
        self.sam_prompt_encoder = PromptEncoder(c, self.embedding_size, self.image_size, mask_in_chans=16)
        self.sam_mask_decoder = MaskDecoder(
            c, use_high_res_features=cfg.get("use_high_res_features_in_sam", False),
            iou_prediction_use_sigmoid=cfg.get("iou_prediction_use_sigmoid", False),
            pred_obj_scores=self.pred_obj_scores, pred_obj_scores_mlp=cfg.get("pred_obj_scores_mlp", False),
            use_multimask_token_for_obj_ptr=cfg.get("use_multimask_token_for_obj_ptr", False),
            **(cfg.get("sam_mask_decoder_extra_args") or {}))
        if self.use_obj_ptrs:
            self.obj_ptr_proj = MLP(c, c, c, 3) if cfg.get("use_mlp_for_obj_ptr_proj") else nn.Linear(c, c)
        else:
            self.obj_ptr_proj = nn.Identity()
        self.obj_ptr_tpos_proj = nn.Linear(c, m) if self.proj_tpos_enc_in_obj_ptrs else nn.Identity()
        self._init_parameters()

    def _read_options(self, cfg):
        get = cfg.get
        self.use_obj_ptrs = get("use_obj_ptrs_in_encoder", False)
        self.max_obj_ptrs = get("max_obj_ptrs_in_encoder", 16)
        self.add_tpos_enc_to_obj_ptrs = get("add_tpos_enc_to_obj_ptrs", True)
        self.proj_tpos_enc_in_obj_ptrs = get("proj_tpos_enc_in_obj_ptrs", False)
        self.signed_tpos_enc_to_obj_ptrs = get("use_signed_tpos_enc_to_obj_ptrs", False)
        self.only_past_obj_ptrs = get("only_obj_ptrs_in_the_past_for_eval", False)
        self.pred_obj_scores = get("pred_obj_scores", False)
        self.fixed_no_obj_ptr = get("fixed_no_obj_ptr", False)
        self.soft_no_obj_ptr = get("soft_no_obj_ptr", False)
        self.directly_add_no_mem_embed = get("directly_add_no_mem_embed", False)
        self.sigmoid_scale = get("sigmoid_scale_for_mem_enc", 1.0)
        self.sigmoid_bias = get("sigmoid_bias_for_mem_enc", 0.0)
        self.binarize_mask_from_pts = get("binarize_mask_from_pts_for_mem_enc", False)
        self.mask_input_as_output = get("use_mask_input_as_output_without_sam", False)
        self.max_cond_frames = get("max_cond_frames_in_attn", -1)
        self.multimask_in_sam = get("multimask_output_in_sam", False)
        self.multimask_pts = (get("multimask_min_pt_num", 1), get("multimask_max_pt_num", 1))
        self.multimask_for_tracking = get("multimask_output_for_tracking", False)
        self.preprocess = get("preprocess", "imagenet")

    def _init_parameters(self):
        for p in (self.maskmem_tpos_enc, self.no_mem_embed, self.no_mem_pos_enc,
                  getattr(self, "no_obj_ptr", None), self.no_obj_embed_spatial):
            if p is not None:
                nn.init.trunc_normal_(p, std=0.02)

    @property
    def needs_pairs(self) -> bool:
        """SAMed-2's temporal adapter encodes images two at a time."""
        return self.image_encoder.trunk.needs_pairs

    # ---- image encoding -------------------------------------------------------------------

    def encode_images(self, images: torch.Tensor, image_encoder=None) -> ImageFeatures:
        """(B, 3, S, S) preprocessed images -> features (B must be even with the temporal adapter).
        `image_encoder`: what computes self.image_encoder's outputs (samed2.backends), by default itself."""
        fpn, pos = (image_encoder or self.image_encoder)(images)
        decoder = self.sam_mask_decoder
        high_res = []
        if decoder.use_high_res_features:
            with full_precision(images):
                high_res = decoder.high_res_features(fpn[0].float(), fpn[1].float())
        return ImageFeatures(high_res, fpn[-1], pos[-1])

    # ---- prompts -> masks -----------------------------------------------------------------

    def decode(self, features: torch.Tensor, high_res: list, points=None, labels=None, boxes=None,
               mask_inputs=None, multimask=False, num_points=None) -> Prediction:
        """Prompt encoder + mask decoder on (memory-conditioned) features.

        points (B, N, 2) and boxes (B, 4) are in model-input pixels; labels (B, N) use the
        prompt encoder's codes (1 positive, 0 negative, 2/3 box corners, -1 padding).
        mask_inputs (B, 1, H, W) are mask logits used as a dense prompt.
        multimask: a bool, or a (B,) bool tensor choosing per row (see MaskDecoder.forward).
        num_points (B,): each row's own number of points when rows of different lengths were padded
        to N with -1; the padding is hidden from attention, so each row decodes as if alone.
        """
        with full_precision(features):
            return self._decode(features.float(), [h.float() for h in high_res], points, labels, boxes,
                                mask_inputs, multimask, num_points)

    def _decode(self, features, high_res, points, labels, boxes, mask_inputs, multimask, num_points) -> Prediction:
        b = features.shape[0]
        if points is None and boxes is None:
            points = features.new_zeros(b, 1, 2)
            labels = -torch.ones(b, 1, dtype=torch.int32, device=features.device)
        dense_prompt = None
        if mask_inputs is not None:
            dense_prompt = mask_inputs.float()
            if dense_prompt.shape[-2:] != self.sam_prompt_encoder.mask_input_size:
                dense_prompt = F.interpolate(dense_prompt, size=self.sam_prompt_encoder.mask_input_size,
                                             mode="bilinear", align_corners=False, antialias=True)
        sparse, dense = self.sam_prompt_encoder(
            points=(points, labels) if points is not None else None, boxes=boxes, masks=dense_prompt,
            batch_size=b)
        keep = None
        if num_points is not None:  # the tokens after the N points (SAM's own padding, a box) stay
            position = torch.arange(sparse.shape[1], device=sparse.device)
            counts = torch.as_tensor(num_points, device=sparse.device)
            keep = (position >= points.shape[1]) | (position < counts[:, None])
        masks, ious, tokens, obj_score = self.sam_mask_decoder(
            features, self.sam_prompt_encoder.dense_pe(), sparse, dense, multimask_output=multimask,
            high_res_features=high_res or None, sparse_mask=keep)
        if self.pred_obj_scores:
            masks = torch.where(obj_score[:, :, None, None] > 0, masks, NO_OBJECT_SCORE)
        masks = masks.float()
        token = tokens[:, 0]
        best = masks
        if torch.is_tensor(multimask) or multimask:
            rows = torch.arange(b, device=masks.device)
            pick = torch.argmax(ious, dim=-1)
            best = masks[rows, pick].unsqueeze(1)
            if tokens.shape[1] > 1:
                token = tokens[rows, pick]
        obj_ptr = self._object_pointer(self.obj_ptr_proj(token), obj_score)
        return Prediction(masks, ious, best, obj_ptr, obj_score)

    def _object_pointer(self, obj_ptr: torch.Tensor, obj_score: torch.Tensor) -> torch.Tensor:
        if not self.pred_obj_scores:
            return obj_ptr
        present = obj_score.sigmoid() if self.soft_no_obj_ptr else (obj_score > 0).float()
        if self.fixed_no_obj_ptr:
            obj_ptr = present * obj_ptr
        return obj_ptr + (1 - present) * self.no_obj_ptr

    def mask_as_output(self, image: ImageFeatures, mask: torch.Tensor) -> Prediction:
        """A given binary mask (B, 1, S, S) taken as the frame's output (SAM 2's mask prompts)."""
        high_res, low_res, present = mask_logits(mask, mask.shape[-1] // 4)
        ious = mask.new_ones(mask.shape[0], 1).float()
        if self.use_obj_ptrs:
            obj_ptr = self.decode(image.features, image.high_res,
                                  mask_inputs=self.mask_downsample(mask.float())).obj_ptr
        else:
            obj_ptr = mask.new_zeros(mask.shape[0], self.hidden_dim).float()
        obj_score = 20.0 * present - 10.0
        if self.pred_obj_scores:
            if self.fixed_no_obj_ptr:
                obj_ptr = present * obj_ptr
            obj_ptr = obj_ptr + (1 - present) * self.no_obj_ptr
        return Prediction(low_res, ious, low_res, obj_ptr, obj_score, high_res_masks=high_res)

    def upsample_logits(self, low_res: torch.Tensor) -> torch.Tensor:
        return F.interpolate(low_res, size=(self.image_size, self.image_size), mode="bilinear",
                             align_corners=False)

    # ---- memory ---------------------------------------------------------------------------

    def attend_memory(self, image: ImageFeatures, memory, memory_pos, num_obj_ptr_tokens=0) -> torch.Tensor:
        """Memory attention of the stride-16 features over memory tokens (B, N, C_mem)."""
        b, c, h, w = image.features.shape
        curr = image.features.flatten(2).transpose(1, 2)
        curr_pos = image.pos.flatten(2).transpose(1, 2)
        out = self.memory_attention(curr, curr_pos, memory, memory_pos, num_obj_ptr_tokens)
        return out.transpose(1, 2).reshape(b, c, h, w)

    def without_memory(self, image: ImageFeatures) -> torch.Tensor:
        """Features of a frame that has no memory to attend to (first prompted frame)."""
        if self.directly_add_no_mem_embed:
            return image.features + self.no_mem_embed.reshape(1, -1, 1, 1)
        b = image.features.shape[0]
        memory = self.no_mem_embed.expand(b, 1, -1)
        return self.attend_memory(image, memory, self.no_mem_pos_enc.expand(b, 1, -1))

    def encode_memory(self, image: ImageFeatures, high_res_logits: torch.Tensor, object_score_logits,
                      from_points: bool):
        """Memory features and position encoding of a frame from its mask logits (B, 1, S, S)."""
        if self.binarize_mask_from_pts and from_points and not self.training:
            mask = (high_res_logits > 0).float()
        else:
            mask = torch.sigmoid(high_res_logits)
        mask = mask * self.sigmoid_scale + self.sigmoid_bias
        features, pos = self.memory_encoder(image.features, mask)
        if self.no_obj_embed_spatial is not None:
            absent = 1 - (object_score_logits > 0).float()
            features = features + absent[..., None, None] * self.no_obj_embed_spatial[..., None, None]
        return features, pos

    def conditioned_features(self, frame_idx: int, image: ImageFeatures, cond: Dict[int, FrameMemory],
                             non_cond: Dict[int, FrameMemory], num_frames: int, reverse: bool = False,
                             is_init_cond_frame: bool = False, extra_memory=None) -> torch.Tensor:
        """Stride-16 features of a frame after attending to its memories.

        `extra_memory` = (tokens, pos) (B, N, C_mem) from SAMed-2's confidence bank: alone on a first
        prompted frame (the reference's image mode), or beside the frame memories (hybrid tracking).
        """
        has_frames = not is_init_cond_frame and bool(cond or non_cond)
        if not has_frames and extra_memory is None:
            return self.without_memory(image)
        tokens, pos, num_ptr = [], [], 0
        if has_frames:
            frame_tokens, frame_pos, num_ptr = self.gather_memory(frame_idx, cond, non_cond, num_frames, reverse)
            spatial = frame_tokens.shape[1] - num_ptr
            tokens.append(frame_tokens[:, :spatial])
            pos.append(frame_pos[:, :spatial])
        if extra_memory is not None:
            tokens.append(extra_memory[0].to(image.features.dtype))
            pos.append(extra_memory[1].to(image.features.dtype))
        if num_ptr:  # object pointers stay last: they are excluded from RoPE
            tokens.append(frame_tokens[:, -num_ptr:])
            pos.append(frame_pos[:, -num_ptr:])
        return self.attend_memory(image, torch.cat(tokens, dim=1), torch.cat(pos, dim=1), num_ptr)

    def gather_memory(self, frame_idx: int, cond: Dict[int, FrameMemory], non_cond: Dict[int, FrameMemory],
                      num_frames: int, reverse: bool = False):
        """Memory tokens for a frame, SAM 2's way: conditioning frames, the most recent frames, pointers.

        Returns (memory (B, N, C_mem), memory_pos (B, N, C_mem), number of pointer tokens at the end).
        """
        selected, unselected = select_closest_cond_frames(frame_idx, cond, self.max_cond_frames)
        step = 1 if reverse else -1  # towards already-tracked frames
        entries = [(0, out) for out in selected.values()]
        for t_pos in range(1, self.num_maskmem):
            prev = frame_idx + step * (self.num_maskmem - t_pos)
            entries.append((t_pos, non_cond.get(prev, unselected.get(prev))))
        tokens, pos = [], []
        for t_pos, out in entries:
            if out is None:
                continue
            like = self.maskmem_tpos_enc
            tokens.append(out.features.flatten(2).transpose(1, 2).to(device=like.device, dtype=out.pos.dtype))
            tpos = like[self.num_maskmem - t_pos - 1].reshape(1, 1, -1)
            pos.append(out.pos.to(like.device).flatten(2).transpose(1, 2) + tpos)
        num_ptr_tokens = 0
        if self.use_obj_ptrs:
            ptrs, ptr_pos = self._pointer_tokens(frame_idx, selected, unselected, non_cond, num_frames, reverse)
            if ptrs is not None:
                tokens.append(ptrs)
                pos.append(ptr_pos)
                num_ptr_tokens = ptrs.shape[1]
        return torch.cat(tokens, dim=1), torch.cat(pos, dim=1), num_ptr_tokens

    def _pointer_tokens(self, frame_idx, selected, unselected, non_cond, num_frames, reverse):
        max_ptrs = min(num_frames, self.max_obj_ptrs)
        if not self.training and self.only_past_obj_ptrs:
            selected = {t: o for t, o in selected.items() if (t >= frame_idx if reverse else t <= frame_idx)}
        sign = -1 if reverse else 1
        pairs = [((frame_idx - t) * sign if self.signed_tpos_enc_to_obj_ptrs else abs(frame_idx - t), o.obj_ptr)
                 for t, o in selected.items()]
        for t_diff in range(1, max_ptrs):
            t = frame_idx - sign * t_diff
            if t < 0 or t >= num_frames:
                break
            out = non_cond.get(t, unselected.get(t))
            if out is not None:
                pairs.append((t_diff, out.obj_ptr))
        if not pairs:
            return None, None
        ptrs = torch.stack([p.to(self.no_mem_embed.device) for _, p in pairs], dim=1)  # (B, N, C)
        b, n, c = ptrs.shape
        if self.add_tpos_enc_to_obj_ptrs:
            rel = torch.tensor([t for t, _ in pairs], dtype=torch.float32, device=ptrs.device)
            dim = c if self.proj_tpos_enc_in_obj_ptrs else self.mem_dim
            ptr_pos = self.obj_ptr_tpos_proj(sine_1d(rel / max(max_ptrs - 1, 1), dim)).to(ptrs.dtype)
        else:
            ptr_pos = ptrs.new_zeros(n, self.mem_dim)
        split = c // self.mem_dim
        if split > 1:  # each pointer becomes several memory-width tokens
            ptrs = ptrs.reshape(b, n * split, self.mem_dim)
            ptr_pos = ptr_pos.repeat_interleave(split, dim=0)
        return ptrs, ptr_pos.unsqueeze(0).expand(b, -1, -1)

    # ---- tracking -------------------------------------------------------------------------

    def use_multimask(self, is_init_cond_frame: bool, num_points: int) -> bool:
        low, high = self.multimask_pts
        return (self.multimask_in_sam and (is_init_cond_frame or self.multimask_for_tracking)
                and low <= num_points <= high)

    def track_step(self, frame_idx: int, image: ImageFeatures, cond: Dict[int, FrameMemory],
                   non_cond: Dict[int, FrameMemory], num_frames: int, points=None, labels=None,
                   mask_inputs=None, prev_mask_logits=None, reverse: bool = False,
                   is_init_cond_frame: bool = False, run_memory_encoder: bool = True, extra_memory=None,
                   num_points=None, conditioned=None):
        """One frame of SAM 2 tracking. Returns (Prediction, FrameMemory or None).

        num_points: each row's own number of points, for rows padded with -1 (see decode).
        conditioned: the frame's memory-conditioned features when computed before (they depend on the
        image and the memories only, so clicks on a slice can share them); replaces the memory inputs.
        """
        if mask_inputs is not None and self.mask_input_as_output:
            pred = self.mask_as_output(image, mask_inputs)
        else:
            pix = conditioned if conditioned is not None else self.conditioned_features(
                frame_idx, image, cond, non_cond, num_frames, reverse, is_init_cond_frame, extra_memory)
            counts = num_points or [0 if labels is None else labels.shape[1]]
            rows = [self.use_multimask(is_init_cond_frame, n) for n in counts]
            multimask = rows[0] if len(set(rows)) == 1 else torch.tensor(rows, device=pix.device)
            pred = self.decode(pix, image.high_res, points, labels, mask_inputs=prev_mask_logits,
                               multimask=multimask, num_points=num_points)
        if not run_memory_encoder:
            return pred, None
        return pred, self.frame_memory(image, pred, from_points=points is not None)

    def frame_memory(self, image: ImageFeatures, pred: Prediction, from_points: bool) -> FrameMemory:
        high_res = pred.high_res_masks if pred.high_res_masks is not None else self.upsample_logits(pred.low_res_masks)
        features, pos = self.encode_memory(image, high_res, pred.object_score_logits, from_points)
        return FrameMemory(features, pos, pred.obj_ptr)


def mask_logits(mask: torch.Tensor, low_res_side: int):
    """A given binary mask (B, 1, S, S) as decoder output: logits of +-10 at full and at low resolution,
    and whether each row holds anything (B, 1)."""
    high_res = mask.float() * 20.0 - 10.0
    low_res = F.interpolate(high_res, size=(low_res_side, low_res_side), mode="bilinear", align_corners=False,
                            antialias=True)
    return high_res, low_res, (mask.flatten(1).float() > 0).any(dim=1, keepdim=True).float()


def full_precision(like: torch.Tensor):
    """Autocast off. The mask decoder and its high-resolution inputs place the mask's boundary, so under
    bf16 autocast they still run in float32 (about 2 % of a tracked slice's time): masks then agree
    better with float32 ones."""
    return torch.autocast(like.device.type, enabled=False)


def select_closest_cond_frames(frame_idx: int, cond: dict, max_frames: int):
    """Split conditioning frames into those attended to (the closest before, after, then nearest) and the rest."""
    if max_frames == -1 or len(cond) <= max_frames:
        return dict(cond), {}
    chosen = {}
    before = max((t for t in cond if t < frame_idx), default=None)
    after = min((t for t in cond if t >= frame_idx), default=None)
    for t in (before, after):
        if t is not None:
            chosen[t] = cond[t]
    rest = sorted((t for t in cond if t not in chosen), key=lambda t: abs(t - frame_idx))
    for t in rest[: max_frames - len(chosen)]:
        chosen[t] = cond[t]
    return chosen, {t: v for t, v in cond.items() if t not in chosen}


def _strip(section: dict) -> dict:
    """A config section without the reference's `_target_` keys, recursively."""
    return {k: _strip(v) if isinstance(v, dict) else v for k, v in section.items() if k != "_target_"}
