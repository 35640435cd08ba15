"""SAM 2 / SAMed-2 and MedSAM-Lite as plain PyTorch modules built from a config dict."""
from samed2.model.configs import CONFIG_NAMES, get_config
from samed2.model.lite import LiteMedSAM
from samed2.model.sam2 import FrameMemory, ImageFeatures, Prediction, SAM2Model

_ARCHITECTURES = {"sam2": SAM2Model, "medsam-lite": LiteMedSAM}


def build_model(config):
    """Build a model from a config name, a `{"model": {...}}` dict or its inner `model` dict
    (`architecture`: "sam2", the default, or "medsam-lite")."""
    cfg = get_config(config) if isinstance(config, str) else config
    cfg = cfg.get("model", cfg)
    model = _ARCHITECTURES[cfg.get("architecture", "sam2")](cfg)
    return model.eval()


__all__ = ["CONFIG_NAMES", "FrameMemory", "ImageFeatures", "LiteMedSAM", "Prediction", "SAM2Model", "build_model",
           "get_config"]
