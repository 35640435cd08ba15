"""The page's state: every name the page binds, with its default (trame holds the values, the
handlers read and write them as `state.<name>`), and how the page's fields become engine values.
Torch- and trame-free."""
from dataclasses import dataclass, field, fields

from samed2.choices import BACKENDS, DIRECTIONS, PRESETS, STOP_AFTER_ABSENT, PropagationOptions
from samed2.errors import InputError
from SAMed2SlicerLib.confidence import COLOURS


@dataclass
class PageState:
    # the lines above the views
    title: str = ""
    status: str = ""
    error: str = ""
    probe: str = ""  # the world point and voxel under the mouse
    # prompts and segments
    mode: str = "include"  # the prompt tool
    segments: list = field(default_factory=list)  # rows of the segment list
    segment_id: str = ""  # the selected segment
    segment_name: str = ""
    segment_color: str = "#000000"
    # propagation
    busy: bool = False  # a run is going on
    progress: int = 0  # percent
    direction: str = DIRECTIONS[0]
    directions: list = field(default_factory=lambda: list(DIRECTIONS))
    first_slice: str = ""
    last_slice: str = ""
    stop_after_absent: int = STOP_AFTER_ABSENT
    # model and engine settings
    model: str = ""
    models: list = field(default_factory=list)  # the cached ones
    device: str = "auto"
    devices: list = field(default_factory=list)  # those this machine has
    preset: str = ""
    presets: list = field(default_factory=lambda: list(PRESETS))
    backend: str = ""
    backends: list = field(default_factory=lambda: list(BACKENDS))
    # views
    view_layout: str = "Axial"
    view_layouts: list = field(default_factory=list)
    # the confidence strip (samed2_web.confidence_strip)
    strip: list = field(default_factory=list)  # its cells
    strip_current: int = -1  # the slice its button went to
    strip_colours: dict = field(default_factory=COLOURS.copy)  # by level
    # the fine-tune panel (samed2_web.finetune_panel)
    finetune_name: str = ""
    finetune_replace: bool = False
    finetune_busy: bool = False
    finetune_progress: int = 0


NAMES = frozenset(f.name for f in fields(PageState))


def publish(state, **values) -> None:
    """Put values into trame's state under their PageState names; an unknown name is an error."""
    unknown = sorted(set(values) - NAMES)
    if unknown:
        raise KeyError(f"not page state: {', '.join(unknown)}")
    state.update(values)


def count_field(value, name):
    """A whole number (slice number, slice count) typed in the page, or None when left empty."""
    if value is None or str(value).strip() == "":
        return None
    try:
        number = int(str(value).strip())
    except ValueError:
        raise InputError(f"{name} must be a whole number (it reads {value!r})") from None
    if number < 0:
        raise InputError(f"{name} must be 0 or more (it reads {number})")
    return number


def propagation_options(state) -> PropagationOptions:
    """The page's direction and limits."""
    stop_after = count_field(state.stop_after_absent, "Stop after")
    return PropagationOptions(state.direction, start=count_field(state.first_slice, "First"),
                              stop=count_field(state.last_slice, "Last"),
                              stop_after_absent=STOP_AFTER_ABSENT if stop_after is None else stop_after)


def hex_color(rgb) -> str:
    return "#" + "".join(f"{round(255 * c):02x}" for c in rgb)


def rgb_color(hex_text) -> tuple:
    return tuple(int(hex_text[i:i + 2], 16) / 255 for i in (1, 3, 5))
