"""What the module needs installed in Slicer's Python, and how (the Qt-free part of the
first-run install flow; the GUI asks once, then runs the plan).

- torch comes from the PyTorch extension (its PyTorchUtils module picks the CUDA, MPS or CPU
  build for this computer): without the extension, the plan says how to get it;
- the other packages go through `slicer.packaging.pip_ensure` (Slicer >= 5.12), else
  `slicer.util.pip_install`.

Nothing here installs at import time; `InstallPlan.for_this_python()` only looks.
"""
import importlib.metadata
import importlib.util
from dataclasses import dataclass, field
from typing import List

from packaging.requirements import Requirement

TORCH_VERSION = ">=2.1"
TORCH_REQUIREMENT = "torch" + TORCH_VERSION
ENGINE_REQUIREMENTS = ("safetensors>=0.4", "requests>=2.31")
DICOM_REQUIREMENTS = ("pydicom>=3.0", "highdicom>=0.25", "pylibjpeg>=2.0", "pylibjpeg-openjpeg>=2.3")
PYTORCH_EXTENSION_MODULE = "PyTorchUtils"


def satisfied(requirement: str) -> bool:
    """Whether an installed distribution meets a requirement string (e.g. "highdicom>=0.25")."""
    parsed = Requirement(requirement)
    try:
        version = importlib.metadata.version(parsed.name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return parsed.specifier.contains(version, prereleases=True)


def unsatisfied(requirements) -> List[str]:
    return [r for r in requirements if not satisfied(r)]


def pytorch_extension_installed() -> bool:
    """Whether Slicer's PyTorch extension (its PyTorchUtils module) can be imported."""
    return importlib.util.find_spec(PYTORCH_EXTENSION_MODULE) is not None


@dataclass
class InstallPlan:
    torch: bool  # torch must be installed (through the PyTorch extension)
    packages: List[str] = field(default_factory=list)  # pip requirements to install
    pytorch_extension: bool = True  # the PyTorch extension is there

    @classmethod
    def for_this_python(cls, requirements=ENGINE_REQUIREMENTS + DICOM_REQUIREMENTS) -> "InstallPlan":
        return cls(torch=not satisfied(TORCH_REQUIREMENT), packages=unsatisfied(requirements),
                   pytorch_extension=pytorch_extension_installed())

    @property
    def needed(self) -> bool:
        return self.torch or bool(self.packages)

    def blocker(self):
        """Why the plan cannot run, with what to do (None when it can)."""
        if self.torch and not self.pytorch_extension:
            return ("SAMed-2 needs PyTorch, which Slicer gets from the PyTorch extension, and that extension is "
                    "not installed. Open View > Extensions Manager, install 'PyTorch', restart Slicer, then "
                    "open SAMed-2 again.")
        return None

    def message(self) -> str:
        """What the one confirmation dialog lists."""
        lines = ["SAMed-2 needs these Python packages, which are not installed yet:", ""]
        if self.torch:
            lines.append(f"  - PyTorch ({TORCH_REQUIREMENT}), through the PyTorch extension: the CUDA, Apple MPS or "
                         "CPU build that suits this computer (a large download, several minutes)")
        lines += [f"  - {requirement}" for requirement in self.packages]
        lines += ["", "They are installed into Slicer's own Python, in the background with progress.",
                  "Install them now?"]
        return "\n".join(lines)


def pip_install_function(slicer_module):
    """(function, name) installing a list of requirement strings with what this Slicer offers:
    `slicer.packaging.pip_ensure` (Slicer >= 5.12; no second question, the plan was confirmed)
    or `slicer.util.pip_install`."""
    packaging = getattr(slicer_module, "packaging", None)
    if packaging is not None and hasattr(packaging, "pip_ensure"):
        def ensure(requirements):
            packaging.pip_ensure([Requirement(r) for r in requirements], prompt_install=False,
                                 requester="SAMed-2")
        return ensure, "slicer.packaging.pip_ensure"

    def install(requirements):
        slicer_module.util.pip_install(" ".join(requirements))  # no spaces inside a requirement
    return install, "slicer.util.pip_install"
