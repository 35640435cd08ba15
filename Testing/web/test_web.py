"""`samed2 web` end to end in headless Chromium, run in the web app's own environment.

trame-slicer 2.0.0 pins slicer-core 5.11 and vtk 9.6.0 while the rest of the suite runs on
slicer-core 5.13 / vtk 9.6.2, so the app lives in a second virtual environment (.venv-web, made
by .ci/install). Each end-to-end file (web_e2e.py, web_pacs_e2e.py) runs there once, with the committed
test-trained model (trained_model.py); its tests run in file order as one user's session, and each is
reported here as its own test, with that test's outcome and failure text from the run's JUnit XML.
"""
import ast
import os
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

import pytest

REPO = Path(__file__).resolve().parents[2]
WEB_PYTHON = Path(os.environ.get("SAMED2_WEB_PYTHON") or REPO / ".venv-web" / "bin" / "python")
E2E = Path(__file__).with_name("web_e2e.py")
PACS_E2E = Path(__file__).with_name("web_pacs_e2e.py")


def e2e_tests(script: Path) -> list:
    """The test functions of an end-to-end file, in file order (read without importing it: playwright is
    only in .venv-web)."""
    tree = ast.parse(script.read_text())
    return [node.name for node in tree.body if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")]


class E2ERun:
    """One run of an end-to-end file in .venv-web: each test's result element from its JUnit XML, and the
    run's output for the tests it never reached."""

    def __init__(self, script: Path, trained_model, folder: Path):
        junit = folder / "junit.xml"
        env = dict(os.environ, SAMED2_WEB_MODEL=str(trained_model.weights),
                   SAMED2_WEB_MODEL_CONFIG=str(trained_model.weights.with_name("fixture.config.json")))
        command = [str(WEB_PYTHON), "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "--basetemp",
                   str(folder / "e2e"), f"--junitxml={junit}", str(script)]
        try:
            result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
                                    check=False)
            self.output = f"{result.stdout[-12000:]}\n{result.stderr[-4000:]}"
        except subprocess.TimeoutExpired as timeout:
            output = timeout.stdout or ""
            if isinstance(output, bytes):  # as POSIX's subprocess gives it, text=True notwithstanding
                output = output.decode(errors="replace")
            self.output = f"timed out after {timeout.timeout} s\n{output[-12000:]}"
        sys.stdout.write(self.output[-4000:])
        self.cases = {}
        if junit.exists():
            for case in ElementTree.parse(junit).iter("testcase"):
                self.cases[case.get("name").split("[")[0]] = case

    def report(self, name: str) -> None:
        """Pass, fail or skip as the test `name` did in the run."""
        case = self.cases.get(name)
        if case is None:
            pytest.fail(f"{name} did not run: the web end-to-end run ended before it:\n{self.output}", pytrace=False)
        for kind in ("failure", "error"):
            found = case.find(kind)
            if found is not None:
                pytest.fail(f"{kind}: {found.get('message')}\n{found.text or ''}", pytrace=False)
        skipped = case.find("skipped")
        if skipped is not None:
            pytest.skip(skipped.get("message"))


@pytest.fixture(scope="session")
def e2e_runs(trained_model, tmp_path_factory):
    """The end-to-end run of a file, started by the first of its tests that asks for it."""
    if not WEB_PYTHON.exists():
        pytest.fail(f"{WEB_PYTHON} not found: bash .ci/install makes the web app's environment")
    runs = {}

    def run(script: Path) -> E2ERun:
        if script not in runs:
            runs[script] = E2ERun(script, trained_model, tmp_path_factory.mktemp(script.stem))
        return runs[script]

    return run


@pytest.mark.slow
@pytest.mark.web
@pytest.mark.parametrize("name", e2e_tests(E2E))
def test_web_app_end_to_end_in_headless_chromium(e2e_runs, name):
    e2e_runs(E2E).report(name)


@pytest.mark.slow
@pytest.mark.web
@pytest.mark.parametrize("name", e2e_tests(PACS_E2E))
def test_web_page_opens_a_series_from_a_pacs_and_saves_to_it(e2e_runs, name):
    e2e_runs(PACS_E2E).report(name)


@pytest.mark.parametrize("host, token, message", [
    ("0.0.0.0", None, "give an access token with --token"),
    ("192.168.1.20", "short", "at least 16 characters"),
    ("web.example.org", "x" * 20, "not an IP address"),
])
def test_web_refuses_to_listen_beyond_this_machine_without_a_token(host, token, message, capsys, data_dir):
    from samed2_tools.cli import main

    argv = ["web", str(data_dir / "totalseg" / "example_ct_sm.nii.gz"), "--host", host]
    assert main(argv + (["--token", token] if token else [])) == 2
    assert message in capsys.readouterr().err
