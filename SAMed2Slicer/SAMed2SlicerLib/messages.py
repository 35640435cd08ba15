"""The messages the SAMed-2 front ends show their users (the Slicer panel, the Segment Editor
effect, the web page), in one place: status lines, and engine messages put in the GUI's words."""
import re

INSTALLING = "The Python packages SAMed-2 needs are being installed: wait for the installation to end."
INSTALL_FIRST = "SAMed-2 needs a few Python packages first: prompt again once they are installed."
NOT_INSTALLED = "Nothing was installed: SAMed-2 cannot segment without these packages."
LOADING = "Loading model {model} (prompts made meanwhile run when it is ready)..."
LOADED = "Model {model} loaded: {hint} to segment it."
PROPAGATING = "Propagating..."
CANCELLING = "Cancelling after the current slice..."
UNDO_DURING_RUN = "Undo waits for the propagation: cancel it first, or undo when it has ended."
CLICK_FIRST = "Click on the object first: propagation starts from the prompted slices."
NO_RESULT = "No slice has a result yet: prompt and propagate first."
LEAST_CONFIDENT = "Least confident slice: {axis} = {index} (confidence {confidence:.2f})."
# Engine messages name command-line commands; a Slicer user has the module's buttons instead.
GUI_ACTIONS = ((re.compile(r"[Dd]ownload them with `samed2 weights download [^`]*`"),
                "click Download in the SAMed-2 module"),
               (re.compile(r"(import it again with|run) `samed2 weights import [^`]*`"),
                "click Import from file in the SAMed-2 module"),
               (re.compile(r"`samed2 weights download [^`]*`"), "Download in the SAMed-2 module"),
               (re.compile(r"`samed2 weights (import|verify)[^`]*`"), "Import from file in the SAMed-2 module"))


def first_prompt(model) -> str:
    """What to do first with `model`: a box for a model trained on boxes (clicks then correct)."""
    return "draw a box around an object" if getattr(model, "needs_box", False) else "click on an object"


def propagating(progress) -> str:
    return f"Propagating: slice {progress.index} ({progress.done} done)"


def propagated(job) -> str:
    done = job.progress().done
    if job.cancelled:
        return f"Propagation cancelled after {done} slice(s); the slices done are kept (Undo takes them back)."
    return (f"Propagation done: {done} slice(s). Correct any slice with more prompts or the paint tools, then "
            "propagate again: prompted and corrected slices are kept.")


def gui_text(message: str) -> str:
    """An engine message for a user of the GUI: command-line commands become the module's buttons."""
    for pattern, replacement in GUI_ACTIONS:
        message = pattern.sub(replacement, message)
    return message
