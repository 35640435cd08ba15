"""The web page's state (samed2_web.state): every name the page's code binds, reads or writes is a
PageState field, and the page's fields become engine values. Read without trame (the web app's own
environment runs the page itself: test_web.py)."""
import ast
from pathlib import Path
from types import SimpleNamespace

import pytest

from samed2.choices import STOP_AFTER_ABSENT, PropagationOptions
from samed2.errors import InputError
from samed2_web.state import NAMES, PageState, hex_color, propagation_options, publish, rgb_color

WEB = Path(__file__).resolve().parents[2] / "web" / "samed2_web"


def names_in_page_code(source: str) -> set:
    """State names in the page's code: `state.<name>`, `@change("<name>", ...)` and trame's one-name
    bindings `("<name>",)`."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr == "state":
            names.add(node.attr)
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "change":
            names.update(arg.value for arg in node.args)
        elif isinstance(node, ast.Tuple) and len(node.elts) == 1 and isinstance(node.elts[0], ast.Constant):
            if str(node.elts[0].value).isidentifier():
                names.add(node.elts[0].value)
    return names


@pytest.mark.parametrize("module", ["app.py", "ui.py", "confidence_strip.py", "finetune_panel.py"])
def test_every_name_the_page_code_uses_is_page_state(module):
    used = names_in_page_code((WEB / module).read_text())
    assert used, f"no state names found in {module}"
    assert used <= NAMES, f"{module} uses names PageState lacks: {sorted(used - NAMES)}"


def test_publish_puts_page_state_and_refuses_an_unknown_name():
    state = {}
    publish(state, **vars(PageState(status="ready")))
    assert state["status"] == "ready" and state["stop_after_absent"] == STOP_AFTER_ABSENT and set(state) == NAMES
    with pytest.raises(KeyError, match="statsu"):
        publish(state, statsu="typo")


def test_propagation_options_read_the_page_fields():
    page = SimpleNamespace(direction="up", first_slice=" 3 ", last_slice="", stop_after_absent="")
    assert propagation_options(page) == PropagationOptions("up", start=3, stop=None,
                                                           stop_after_absent=STOP_AFTER_ABSENT)
    page.stop_after_absent = "-1"
    with pytest.raises(InputError, match="Stop after must be 0 or more"):
        propagation_options(page)
    page.stop_after_absent, page.last_slice = "0", "x"
    with pytest.raises(InputError, match="Last must be a whole number"):
        propagation_options(page)


def test_segment_colours_go_to_the_page_and_back():
    assert hex_color((0.87, 0.51, 0.40)) == "#de8266"
    assert hex_color(rgb_color("#2040ff")) == "#2040ff"
