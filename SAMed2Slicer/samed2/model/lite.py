"""MedSAM-Lite (LiteMedSAM): a TinyViT image encoder with SAM 1's prompt encoder and mask decoder, at
256 px, without memory. State dict keys follow the official checkpoint (`image_encoder.*`,
`prompt_encoder.*`, `mask_decoder.*`).

It offers the calls the session makes on SAM 2 (encode_images, track_step, frame_memory,
mask_as_output), so one session drives both; being memory-less, it ignores the memory arguments and
leaves an empty FrameMemory, and the session propagates it by box chaining.
"""
import torch
from torch import nn

from samed2.chain import BoxChain
from samed2.confidence import IouCalibration
from samed2.model.mask_decoder import MaskDecoder
from samed2.model.prompt_encoder import BOX_TOP_LEFT, PromptEncoder
from samed2.model.sam2 import FrameMemory, ImageFeatures, Prediction, mask_logits
from samed2.model.tiny_vit import TinyViT

PRESENT_SCORE = 10.0  # object score logit of every prediction: the model has no object-score head


class LiteMedSAM(nn.Module):
    has_memory = False
    needs_pairs = False
    needs_box = True  # trained on box prompts: clicks alone give empty masks, clicks with a box refine it

    def __init__(self, cfg: dict):
        super().__init__()
        self.cfg = cfg
        self.image_size = cfg["image_size"]
        self.preprocess = cfg.get("preprocess", "letterbox")
        c = cfg["prompt_embed_dim"]
        self.image_encoder = TinyViT(**cfg["image_encoder"])
        self.embedding_size = self.image_size // 4
        self.prompt_encoder = PromptEncoder(c, self.embedding_size, self.image_size, cfg.get("mask_in_chans", 16))
        self.mask_decoder = MaskDecoder(c, sam1=True)
        self.box_chain = BoxChain(**cfg.get("box_chain", {}))
        self.iou_calibration = IouCalibration(**cfg["iou_calibration"]) if "iou_calibration" in cfg else None

    # ---- the model itself (what parity compares with the reference) ----------------------

    def encode_images(self, images: torch.Tensor, image_encoder=None) -> ImageFeatures:
        """(B, 3, S, S) letterboxed images in [0, 1] -> (B, 256, S/4, S/4) embeddings.
        `image_encoder`: what computes self.image_encoder's output (samed2.backends), by default itself."""
        features = (image_encoder or self.image_encoder)(images)
        pos = self.prompt_encoder.dense_pe().expand(features.shape[0], -1, -1, -1)
        return ImageFeatures([], features, pos)

    def decode(self, features: torch.Tensor, points=None, labels=None, boxes=None) -> Prediction:
        """SAM 1 decoding, single-mask output. points (B, N, 2) in model pixels with labels 1 / 0, boxes
        (B, 4) x0 y0 x1 y1. (MedSAM-Lite was trained with boxes and this output only: its three
        multimask outputs are untrained, near-zero logits.)"""
        b = features.shape[0]
        sparse, dense = self.prompt_encoder(points=None if points is None else (points, labels), boxes=boxes,
                                            batch_size=b)
        masks, ious, _, _ = self.mask_decoder(features, self.prompt_encoder.dense_pe(), sparse, dense,
                                              multimask_output=False)
        masks = masks.float()
        return Prediction(masks, ious, masks, masks.new_zeros(b, 0), masks.new_full((b, 1), PRESENT_SCORE))

    # ---- the session's calls ---------------------------------------------------------------

    def track_step(self, frame_idx: int, image: ImageFeatures, cond, non_cond, num_frames: int, points=None,
                   labels=None, mask_inputs=None, prev_mask_logits=None, reverse: bool = False,
                   is_init_cond_frame: bool = False, run_memory_encoder: bool = True, extra_memory=None,
                   num_points=None, conditioned=None):
        """Decode the prompts of each row (session layout: box corners labelled 2 and 3, then points).
        Memory and the slice's earlier logits are not used: every click decodes all of the slice's
        prompts afresh, as MedSAM-Lite was trained (box prompts, no mask input)."""
        if mask_inputs is not None:
            pred = self.mask_as_output(image, mask_inputs)
        else:
            rows = range(image.features.shape[0])
            counts = num_points or [labels.shape[1] if labels is not None else 0] * len(rows)
            preds = [self._decode_row(image.features[r: r + 1], points, labels, r, counts[r]) for r in rows]
            pred = Prediction.cat(preds)
        return pred, self.frame_memory(image, pred, points is not None) if run_memory_encoder else None

    def _decode_row(self, features, points, labels, row: int, count: int) -> Prediction:
        if points is None:
            return self.decode(features)
        coords, codes = points[row, :count], labels[row, :count]
        corner = codes >= BOX_TOP_LEFT
        box = coords[corner].reshape(1, 4) if bool(corner.any()) else None
        clicks = coords[~corner][None] if bool((~corner).any()) else None
        return self.decode(features, clicks, codes[~corner][None] if clicks is not None else None, box)

    def frame_memory(self, image: ImageFeatures, pred: Prediction, from_points: bool) -> FrameMemory:
        """Nothing: the model keeps no memory (an empty FrameMemory keeps the session's bookkeeping)."""
        empty = image.features.new_zeros(pred.ious.shape[0], 0, 1, 1)
        return FrameMemory(empty, empty, pred.obj_ptr)

    def mask_as_output(self, image: ImageFeatures, mask: torch.Tensor) -> Prediction:
        """A given binary mask (B, 1, S, S) as the slice's result."""
        logits, low_res, present = mask_logits(mask, 4 * self.embedding_size)
        b = mask.shape[0]
        return Prediction(low_res, logits.new_ones(b, 1), low_res, logits.new_zeros(b, 0),
                          20.0 * present - 10.0, high_res_masks=logits)
