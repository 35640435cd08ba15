"""`samed2 web` end to end in headless Chromium, run in the web app's own environment.

trame-slicer 2.0.0 pins slicer-core 5.11 and vtk 9.6.0 while the rest of the suite runs on
slicer-core 5.13 / vtk 9.6.2, so the app lives in a second virtual environment (.venv-web, made
by .ci/install). These tests hand the committed test-trained model (trained_model.py) to
web_e2e.py and web_pacs_e2e.py, run there, and fail with that run's output.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from trained_model import trained_model  # noqa: F401 (fixture)

REPO = Path(__file__).resolve().parents[1]
WEB_PYTHON = Path(os.environ.get("SAMED2_WEB_PYTHON") or REPO / ".venv-web" / "bin" / "python")
E2E = Path(__file__).with_name("web_e2e.py")
PACS_E2E = Path(__file__).with_name("web_pacs_e2e.py")


def run_in_web_environment(script: Path, trained_model, tmp_path) -> None:  # noqa: F811
    if not WEB_PYTHON.exists():
        pytest.fail(f"{WEB_PYTHON} not found: bash .ci/install makes the web app's environment")
    env = dict(os.environ, SAMED2_WEB_MODEL=str(trained_model.weights),
               SAMED2_WEB_MODEL_CONFIG=str(trained_model.weights.with_name("fixture.config.json")))
    result = subprocess.run([str(WEB_PYTHON), "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider",
                             "--basetemp", str(tmp_path / "e2e"), str(script)],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=900, check=False)
    sys.stdout.write(result.stdout[-4000:])
    assert result.returncode == 0, f"web end-to-end run failed:\n{result.stdout[-12000:]}\n{result.stderr[-4000:]}"


def test_web_app_end_to_end_in_headless_chromium(trained_model, tmp_path):  # noqa: F811
    run_in_web_environment(E2E, trained_model, tmp_path)


def test_web_page_opens_a_series_from_a_pacs_and_saves_to_it(trained_model, tmp_path):  # noqa: F811
    run_in_web_environment(PACS_E2E, trained_model, tmp_path)


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
