"""The SAM 2 / SAMed-2 architecture as plain PyTorch modules built from a config dict."""
from .configs import CONFIG_NAMES, get_config
from .sam2 import FrameMemory, ImageFeatures, Prediction, SAM2Model


def build_model(config) -> SAM2Model:
    """Build a model from a config name, a `{"model": {...}}` dict or its inner `model` dict."""
    cfg = get_config(config) if isinstance(config, str) else config
    model = SAM2Model(cfg.get("model", cfg))
    return model.eval()


__all__ = ["CONFIG_NAMES", "FrameMemory", "ImageFeatures", "Prediction", "SAM2Model", "build_model", "get_config"]
