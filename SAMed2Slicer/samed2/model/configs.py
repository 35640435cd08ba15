"""Named model configurations.

The schema mirrors the official SAM 2 YAML files (nested `model` dict, same field names, no
`_target_` needed), so a config exported from the reference code loads as is. Two additions:
`image_encoder.trunk.temporal_adapter` (SAMed-2's adapter, off by default) and
`image_encoder.trunk.fusion_blocks` (SAMed-2's unused `fancy_fusion` parameters, kept only so its
checkpoint loads strictly), plus the top-level `preprocess` ("unit": [0, 1] only, SAMed-2;
"imagenet": ImageNet mean/std, SAM 2.x).
"""
import copy

# Hiera trunk sizes: (embed_dim, num_heads, stages, global_att_blocks, window_spec, bkg_size)
_TRUNKS = {
    "tiny": (96, 1, [1, 2, 7, 2], [5, 7, 9], [8, 4, 14, 7], [7, 7]),
    "small": (96, 1, [1, 2, 11, 2], [7, 10, 13], [8, 4, 14, 7], [7, 7]),
    "base_plus": (112, 2, [2, 3, 16, 3], [12, 16, 20], [8, 4, 14, 7], [14, 14]),
    "large": (144, 2, [2, 6, 36, 4], [23, 33, 43], [8, 4, 16, 8], [7, 7]),
}

# What Meta's build_sam2 adds for inference ("apply_postprocessing").
_STABILITY = {
    "dynamic_multimask_via_stability": True,
    "dynamic_multimask_stability_delta": 0.05,
    "dynamic_multimask_stability_thresh": 0.98,
}


def _rope_attention(d_model: int, feat: int, kv_in_dim=None) -> dict:
    attn = {"rope_theta": 10000.0, "feat_sizes": [feat, feat], "embedding_dim": d_model,
            "num_heads": 1, "downsample_rate": 1, "dropout": 0.1}
    if kv_in_dim is not None:
        attn.update(rope_k_repeat=True, kv_in_dim=kv_in_dim)
    return attn


def sam2_config(size: str, version: str = "2.1", image_size: int = 1024) -> dict:
    """The official SAM 2.0 / 2.1 Hiera config for `size` (tiny, small, base_plus, large)."""
    embed_dim, heads, stages, global_blocks, window_spec, bkg = _TRUNKS[size]
    channels = [embed_dim * 8, embed_dim * 4, embed_dim * 2, embed_dim]
    feat = image_size // 16
    model = {
        "image_encoder": {
            "scalp": 1,
            "trunk": {"embed_dim": embed_dim, "num_heads": heads, "stages": stages,
                      "global_att_blocks": global_blocks, "window_spec": window_spec,
                      "window_pos_embed_bkg_spatial_size": bkg},
            "neck": {"position_encoding": {"num_pos_feats": 256, "normalize": True, "scale": None,
                                           "temperature": 10000},
                     "d_model": 256, "backbone_channel_list": channels,
                     "fpn_top_down_levels": [2, 3], "fpn_interp_model": "nearest"},
        },
        "memory_attention": {
            "d_model": 256, "pos_enc_at_input": True, "num_layers": 4,
            "layer": {"activation": "relu", "dim_feedforward": 2048, "dropout": 0.1,
                      "pos_enc_at_attn": False, "d_model": 256,
                      "pos_enc_at_cross_attn_keys": True, "pos_enc_at_cross_attn_queries": False,
                      "self_attention": _rope_attention(256, feat),
                      "cross_attention": _rope_attention(256, feat, kv_in_dim=64)},
        },
        "memory_encoder": {
            "out_dim": 64, "in_dim": 256,
            "position_encoding": {"num_pos_feats": 64, "normalize": True, "scale": None,
                                  "temperature": 10000},
            "mask_downsampler": {"kernel_size": 3, "stride": 2, "padding": 1},
            "fuser": {"layer": {"dim": 256, "kernel_size": 7, "padding": 3,
                                "layer_scale_init_value": 1e-6, "use_dwconv": True},
                      "num_layers": 2},
        },
        "num_maskmem": 7,
        "image_size": image_size,
        "sigmoid_scale_for_mem_enc": 20.0,
        "sigmoid_bias_for_mem_enc": -10.0,
        "use_mask_input_as_output_without_sam": True,
        "directly_add_no_mem_embed": True,
        "use_high_res_features_in_sam": True,
        "multimask_output_in_sam": True,
        "iou_prediction_use_sigmoid": True,
        "use_obj_ptrs_in_encoder": True,
        "add_tpos_enc_to_obj_ptrs": False,
        "only_obj_ptrs_in_the_past_for_eval": True,
        "pred_obj_scores": True,
        "pred_obj_scores_mlp": True,
        "fixed_no_obj_ptr": True,
        "multimask_output_for_tracking": True,
        "use_multimask_token_for_obj_ptr": True,
        "multimask_min_pt_num": 0,
        "multimask_max_pt_num": 1,
        "use_mlp_for_obj_ptr_proj": True,
        "binarize_mask_from_pts_for_mem_enc": True,
        "sam_mask_decoder_extra_args": dict(_STABILITY),
        "preprocess": "imagenet",
    }
    if version == "2.1":
        model.update(no_obj_embed_spatial=True, add_tpos_enc_to_obj_ptrs=True,
                     proj_tpos_enc_in_obj_ptrs=True, use_signed_tpos_enc_to_obj_ptrs=True)
    return {"model": model}


def samed2_config() -> dict:
    """SAMed-2: SAM 2.0 Hiera-S with temporal adapters, with the reference's inference settings."""
    cfg = sam2_config("small", version="2.0")
    model = cfg["model"]
    model["image_encoder"]["trunk"].update(temporal_adapter=True, fusion_blocks=True)
    model["binarize_mask_from_pts_for_mem_enc"] = False
    model["preprocess"] = "unit"
    return cfg


def medsam2_config() -> dict:
    """MedSAM2: SAM 2.1 Hiera-T trained at 512x512."""
    return sam2_config("tiny", version="2.1", image_size=512)


def medsam_lite_config() -> dict:
    """MedSAM-Lite (LiteMedSAM): TinyViT-5M image encoder at 256 px, SAM 1 prompt encoder and mask decoder.
    `preprocess` "letterbox": [0, 1] intensities, longer side resized to 256, padded at the bottom/right."""
    return {"model": {
        "architecture": "medsam-lite",
        "image_size": 256,
        "preprocess": "letterbox",
        "prompt_embed_dim": 256,
        "mask_in_chans": 16,
        "image_encoder": {"embed_dims": [64, 128, 160, 320], "depths": [2, 2, 6, 2], "num_heads": [2, 4, 5, 10],
                          "window_sizes": [7, 7, 14, 7], "merge_strides": [2, 2, 1], "mlp_ratio": 4.0,
                          "mbconv_expand_ratio": 4.0, "local_conv_size": 3, "out_chans": 256},
        # propagation (samed2.chain.BoxChain), tuned on the even-numbered structures of totalseg/example_ct_sm
        # (docs/ACCURACY.md, "How the chain's rule was chosen")
        "box_chain": {"margins": [3.0, 6.0, 10.0], "min_iou": 0.75, "min_area_ratio": 0.3, "min_overlap": 0.5,
                      "min_in_band": 0.3},
        "iou_calibration": {"offset": -10.5, "scale": 12.673},  # samed2.confidence, fitted with the stop rule
    }}


_BUILDERS = {"samed2": samed2_config, "medsam2": medsam2_config, "medsam-lite": medsam_lite_config}
for _size in _TRUNKS:
    _BUILDERS[f"sam2-hiera-{_size}"] = lambda s=_size: sam2_config(s, "2.0")
    _BUILDERS[f"sam2.1-hiera-{_size}"] = lambda s=_size: sam2_config(s, "2.1")

CONFIG_NAMES = sorted(_BUILDERS)


def get_config(name: str) -> dict:
    """A fresh copy of the named config (`{"model": {...}}`)."""
    if name not in _BUILDERS:
        raise KeyError(f"unknown model config {name!r}; known: {', '.join(CONFIG_NAMES)}")
    return copy.deepcopy(_BUILDERS[name]())
