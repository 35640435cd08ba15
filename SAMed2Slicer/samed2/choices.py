"""Every choice the front ends offer and every default they share, in one place without torch: the
engine, the Slicer module and its effect, the web page and the command line read them from here.

`EngineSettings` is what makes a segmenter (model, device, intensity preset, precision, backend);
`PropagationOptions` is how one propagation run goes. Both check their values when made, so a
misspelt setting fails where it is written, naming the valid ones.

The precision and the backend have two defaults, on purpose: the module's Logic and both GUIs use
EngineSettings ("auto": chosen by a measurement on the user's machine), while an engine `Session` or a
`Segmenter` made in Python without them runs SESSION_PRECISION on SESSION_BACKEND, the same on every
machine (scripts, tests, the evaluation).
"""
import dataclasses
from dataclasses import dataclass
from numbers import Integral
from typing import Optional

from samed2.errors import InputError

DEVICES = ("auto", "cuda", "mps", "cpu")  # and "cuda:N"
PRECISIONS = ("auto", "fp32", "bf16")  # "auto" picks by measurement (samed2.device)
BACKENDS = ("auto", "torch", "openvino")  # what runs the image encoder on the CPU (samed2.backends)
ENGINE_PRESETS = ("soft_tissue", "lung", "bone", "brain", "liver", "mr", "auto")  # samed2.presets
PRESETS = ("auto", "view", *ENGINE_PRESETS[:-1])  # what the GUIs offer: "view" = the window Slicer shows
STRATEGIES = ("track", "box-chain", "hybrid")  # samed2.strategy
DIRECTIONS = ("both", "up", "down")  # up: towards higher slice numbers
PROMPT_TOOLS = ("include", "exclude", "box")
EXPORT_KINDS = ("DICOM-SEG", "NIfTI", "Slicer segmentation")
STOP_AFTER_ABSENT = 3  # propagation stops after this many slices without the object; 0 = never
EFFECT_NAME = "SAMed-2"  # the Segment Editor effect, and the DICOM-SEG algorithm name
SESSION_PRECISION, SESSION_BACKEND = "fp32", "torch"  # a Session's defaults (see above)


def check_choice(kind: str, value, valid) -> None:
    """An `InputError` naming the valid values unless `value` is one of them."""
    if value not in valid:
        raise InputError(f"unknown {kind} {value!r}; choose one of {', '.join(map(str, valid))}")


def check_device(name: str) -> None:
    if not str(name).startswith("cuda:"):
        check_choice("device", name, DEVICES)


@dataclass(frozen=True)
class EngineSettings:
    """What a segmenter is made with. `model` "" = the best model in the cache."""

    model: str = ""
    device: str = "auto"
    preset: str = "auto"
    precision: str = "auto"
    backend: str = "auto"

    def __post_init__(self):
        check_device(self.device)
        check_choice("intensity preset", self.preset, PRESETS)
        check_choice("precision", self.precision, PRECISIONS)
        check_choice("backend", self.backend, BACKENDS)

    def replace(self, **changes) -> "EngineSettings":
        """A copy with `changes`; an unknown name is an `InputError` naming the settings."""
        names = [f.name for f in dataclasses.fields(self)]
        unknown = sorted(set(changes) - set(names))
        if unknown:
            raise InputError(f"unknown setting {', '.join(unknown)}; the settings are {', '.join(names)}")
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class PropagationOptions:
    """One propagation run: which way from the prompted slices, the first and last slice it may
    write (None = the volume's ends; given the wrong way round they are swapped), and how many
    slices without the object end it (0 = never)."""

    direction: str = "both"
    start: Optional[int] = None
    stop: Optional[int] = None
    stop_after_absent: int = STOP_AFTER_ABSENT

    def __post_init__(self):
        check_choice("direction", self.direction, DIRECTIONS)
        for name in ("start", "stop", "stop_after_absent"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, Integral) or value < 0):
                raise InputError(f"{name} must be a whole number >= 0, not {value!r}")
        if self.stop_after_absent is None:
            raise InputError("stop_after_absent must be a whole number >= 0 (0 = never stop)")
