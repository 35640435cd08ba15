"""`samed2 demo` — README's first command — driven end to end with a model imported from a test
checkpoint and the sample series served from 127.0.0.1 (the real download path, no internet)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import SimpleITK as sitk
import torch

from http_server import FileServer
from samed2.weights import import_checkpoint

SAMED2 = [str(Path(sys.executable).with_name("samed2"))]  # the console script users type


@pytest.fixture
def demo_cache(tmp_path, tiny_model):
    checkpoint = tmp_path / "tiny.pt"
    torch.save({"model": tiny_model.state_dict()}, checkpoint)
    cache = tmp_path / "cache"
    import_checkpoint(checkpoint, name="demo-tiny", config=tiny_model.cfg, cache_dir=cache)
    return cache


def served_sample(server, data_dir) -> str:
    url = None
    for path in sorted((data_dir / "totalseg" / "example_ct_dicom").iterdir()):
        url = server.add(f"/sample/{path.name}", path.read_bytes())
    return url.rsplit("/", 1)[0] + "/"


def test_demo_runs_the_main_job_end_to_end(demo_cache, data_dir, tmp_path):
    out = tmp_path / "out"
    with FileServer() as server:
        base = served_sample(server, data_dir)
        run = subprocess.run([*SAMED2, "demo", "--model", "demo-tiny", "--cache-dir", str(demo_cache),
                              "--sample-url", base, "--out", str(out)], capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        assert len(server.requests) == 20
        again = subprocess.run([*SAMED2, "demo", "--model", "demo-tiny", "--cache-dir", str(demo_cache),
                                "--sample-url", base, "--out", str(out)], capture_output=True, text=True)
        assert again.returncode == 0 and len(server.requests) == 20, "the verified sample is reused from the cache"
    assert {p.name for p in out.iterdir()} >= {"liver.nii.gz", "liver_seg.dcm", "liver.png"}
    labels = sitk.ReadImage(str(out / "liver.nii.gz"))
    assert labels.GetSize() == (512, 512, 20)
    check = subprocess.run(["dciodvfy", str(out / "liver_seg.dcm")], capture_output=True, text=True)
    assert check.returncode == 0 and "Error" not in check.stderr + check.stdout


def test_demo_refuses_a_damaged_sample_file(demo_cache, data_dir, tmp_path):
    with FileServer() as server:
        base = served_sample(server, data_dir)
        first = sorted((data_dir / "totalseg" / "example_ct_dicom").iterdir())[0]
        server.add(f"/sample/{first.name}", first.read_bytes(), mode="wrong_bytes")
        run = subprocess.run([*SAMED2, "demo", "--model", "demo-tiny", "--cache-dir", str(demo_cache),
                              "--sample-url", base, "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert run.returncode == 2
    assert "could not fetch the sample CT" in run.stderr
    assert not (tmp_path / "out").exists()


def test_demo_offline_names_the_import_command(tmp_path):
    env = dict(os.environ, HTTPS_PROXY="http://127.0.0.1:9", HTTP_PROXY="http://127.0.0.1:9")  # refused at once
    run = subprocess.run([*SAMED2, "demo", "--cache-dir", str(tmp_path / "empty"), "--out", str(tmp_path / "out")],
                         capture_output=True, text=True, env=env)
    assert run.returncode == 2
    assert "samed2 weights import" in run.stderr
    assert not list((tmp_path / "empty").glob("*.pth"))
