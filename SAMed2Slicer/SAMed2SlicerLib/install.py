"""What the module needs installed in Slicer's Python, and how (the Qt-free part of the
first-run install flow; the GUI asks once, then runs the plan).

- torch comes from the PyTorch extension (its PyTorchUtils module picks the CUDA, MPS or CPU
  build for this computer): without the extension, the plan says how to get it;
- numpy, SimpleITK, scipy and requests come with Slicer; the engine adds safetensors;
- the DICOM packages are planned only when a DICOM-SEG is exported: pydicom 3 and highdicom
  need Python 3.10, so on Slicer 5.6 and 5.8 (Python 3.9) DICOM-SEG export is refused with what
  to do instead. Slicer 5.10 ships pydicom 2.4 and has imported it: the plan says it replaces
  it, and `stale_modules` keeps the export from running until Slicer has restarted;
- packages go through `slicer.packaging.pip_ensure` where that module exists (`import slicer`
  does not import it), else `slicer.util.pip_install`.

Nothing here installs at import time; `InstallPlan.for_this_python()` only looks.
"""
import importlib
import importlib.metadata
import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Tuple

from packaging.requirements import Requirement

REQUIREMENTS_DIR = Path(__file__).resolve().parent.parent / "Resources" / "Requirements"


def read_requirements(name: str) -> Tuple[str, ...]:
    """The requirement lines of Resources/Requirements/<name>.txt (shared with pyproject.toml)."""
    lines = (line.split("#")[0].strip() for line in (REQUIREMENTS_DIR / f"{name}.txt").read_text().splitlines())
    return tuple(line for line in lines if line)


_ENGINE = read_requirements("engine")
TORCH_REQUIREMENT = next(r for r in _ENGINE if Requirement(r).name == "torch")
TORCH_VERSION = str(Requirement(TORCH_REQUIREMENT).specifier)
ENGINE_REQUIREMENTS = tuple(r for r in _ENGINE if r != TORCH_REQUIREMENT)  # torch: through the PyTorch extension
DICOM_REQUIREMENTS = read_requirements("dicom")
DICOM_PYTHON = (3, 10)
"""pydicom 3 and highdicom >= 0.25 need it: Slicer 5.10 or later."""
SLICER_PYTHONS = {"3.9": "Slicer 5.6 and 5.8", "3.12": "Slicer 5.10 and later"}
"""The Python each supported Slicer embeds (Slicer_REQUIRED_PYTHON_VERSION of each release)."""
PYTORCH_EXTENSION_MODULE = "PyTorchUtils"


def installed_version(requirement: str) -> Optional[str]:
    try:
        return importlib.metadata.version(Requirement(requirement).name)
    except importlib.metadata.PackageNotFoundError:
        return None


def satisfied(requirement: str) -> bool:
    """Whether an installed distribution meets a requirement string (e.g. "highdicom>=0.25")."""
    version = installed_version(requirement)
    return version is not None and Requirement(requirement).specifier.contains(version, prereleases=True)


def unsatisfied(requirements) -> List[str]:
    return [r for r in requirements if not satisfied(r)]


def stale_modules(requirements) -> List[str]:
    """"pydicom 2.4.4" for each package this Python has already imported at a version its
    requirement excludes. An installation replaced it on disk, but the process keeps the old
    module until Slicer restarts (Slicer 5.10's DICOM plugins import its bundled pydicom 2.4.4 at
    start-up), so nothing may use it before the restart. The packages checked (pydicom,
    highdicom) import under their distribution's name."""
    stale = []
    for requirement in map(Requirement, requirements):
        version = getattr(sys.modules.get(requirement.name), "__version__", None)
        if version is not None and not requirement.specifier.contains(version, prereleases=True):
            stale.append(f"{requirement.name} {version}")
    return stale


def pytorch_extension_installed() -> bool:
    """Whether Slicer's PyTorch extension (its PyTorchUtils module) can be imported."""
    return importlib.util.find_spec(PYTORCH_EXTENSION_MODULE) is not None


def planned_requirements(dicom: bool) -> tuple:
    return ENGINE_REQUIREMENTS + (DICOM_REQUIREMENTS if dicom else ())


@dataclass
class InstallPlan:
    torch: bool  # torch must be installed (through the PyTorch extension)
    packages: List[str] = field(default_factory=list)  # pip requirements to install
    pytorch_extension: bool = True  # the PyTorch extension is there
    replaces: List[str] = field(default_factory=list)  # "pydicom 2.4.4": installed, replaced by the plan
    dicom_refused: bool = False  # DICOM-SEG was asked for on a Python its packages do not support

    @classmethod
    def for_this_python(cls, dicom=False, requirements=None, python=sys.version_info[:2]) -> "InstallPlan":
        """What is missing for segmenting (and, with `dicom`, for DICOM-SEG export)."""
        refused = dicom and tuple(python) < DICOM_PYTHON
        packages = unsatisfied(requirements or planned_requirements(dicom and not refused))
        replaces = [f"{Requirement(r).name} {installed_version(r)}" for r in packages if installed_version(r)]
        return cls(torch=not satisfied(TORCH_REQUIREMENT), packages=packages,
                   pytorch_extension=pytorch_extension_installed(), replaces=replaces, dicom_refused=refused)

    @property
    def needed(self) -> bool:
        return self.torch or bool(self.packages) or self.dicom_refused

    def blocker(self) -> Optional[str]:
        """Why the plan cannot run, with what to do (None when it can)."""
        if self.dicom_refused:
            return ("DICOM-SEG export needs Slicer 5.10 or later: the packages that write it (pydicom 3, highdicom) "
                    f"need Python {'.'.join(map(str, DICOM_PYTHON))}, and this Slicer has Python "
                    f"{sys.version_info.major}.{sys.version_info.minor}. Export a NIfTI or Slicer segmentation file "
                    "instead, or use a newer Slicer.")
        if self.torch and not self.pytorch_extension:
            return ("SAMed-2 needs PyTorch, which Slicer gets from the PyTorch extension, and that extension is "
                    "not installed. Open View > Extensions Manager, install 'PyTorch', restart Slicer, then "
                    "open SAMed-2 again.")
        return None

    def missing(self) -> List[str]:
        """One line per thing to install."""
        lines = [f"PyTorch ({TORCH_REQUIREMENT}), through the PyTorch extension: the CUDA, Apple MPS or CPU build "
                 "that suits this computer (a large download, several minutes)"] if self.torch else []
        return lines + list(self.packages)

    def message(self) -> str:
        """What the one confirmation dialog says."""
        lines = ["SAMed-2 needs these Python packages, which are not installed yet:", ""]
        lines += [f"  - {line}" for line in self.missing()]
        if self.replaces:
            lines += ["", f"This replaces {', '.join(self.replaces)}, which Slicer already has (its DICOM module uses "
                          "it): restart Slicer after the installation."]
        lines += ["", "They are installed into Slicer's own Python.", "Install them now?"]
        return "\n".join(lines)

    def after_install_message(self) -> str:
        """What to say when packages are still missing after an installation."""
        return ("Some packages are still missing after the installation:\n\n"
                + "\n".join(f"  - {line}" for line in self.missing())
                + "\n\nRestart Slicer and open SAMed-2 again (a package that was replaced is used only after a "
                  "restart).")


def install_function(slicer_module):
    """(function, name): a function installing a list of requirement strings with what this
    Slicer offers: `slicer.packaging.pip_ensure` (no second question: the plan was confirmed;
    it offers the restart when an imported package was replaced) or `slicer.util.pip_install`."""
    try:
        packaging = importlib.import_module(f"{slicer_module.__name__}.packaging")
    except ImportError:
        packaging = None
    if packaging is not None and hasattr(packaging, "pip_ensure"):
        def ensure(requirements):
            packaging.pip_ensure([Requirement(r) for r in requirements], prompt_install=False, requester="SAMed-2")
        return ensure, "slicer.packaging.pip_ensure"

    def install(requirements):
        slicer_module.util.pip_install(" ".join(requirements))  # no spaces inside a requirement
    return install, "slicer.util.pip_install"
