"""samed2.weights: registry, cache, downloads from a real local HTTP server, safe and strict loading, the CLI."""
import hashlib
import json
import pickle
import random
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from samed2.errors import DownloadError, WeightsError
from samed2.weights import (
    REGISTRY,
    CheckpointInfo,
    cache_dir,
    cached_checkpoint,
    check_state_dict,
    download,
    import_checkpoint,
    list_weights,
    load_model,
    load_state_dict_file,
    load_weights,
    verify,
)
from samed2.weights.cache import read_manifest
from samed2_tools.cli import main as cli_main

from http_server import FileServer
from suite import golden_tiny_config

# ---------------------------------------------------------------- fixtures and helpers

@pytest.fixture
def server():
    with FileServer() as running:
        yield running


@pytest.fixture
def cache(tmp_path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def payload() -> bytes:
    return random.Random(7).randbytes(300_000)


@pytest.fixture(scope="session")
def tiny_config(golden_dir) -> dict:
    return golden_tiny_config()


@pytest.fixture(scope="session")
def tiny_state(tiny_config) -> dict:
    """A state dict of the tiny model with values no fresh model has (so a real load is visible)."""
    from samed2.model import build_model

    generator = torch.Generator().manual_seed(3)
    return {
        key: value + torch.randn(value.shape, generator=generator) if value.is_floating_point() else value.clone()
        for key, value in build_model(tiny_config).state_dict().items()
    }


@pytest.fixture
def tiny_checkpoint(tmp_path, tiny_state) -> Path:
    path = tmp_path / "tiny_model.pt"
    torch.save({"model": tiny_state}, path)
    return path


def checkpoint_entry(url: str, data: bytes, **overrides) -> CheckpointInfo:
    fields = dict(
        name="test-ckpt", config="samed2", filename="test_ckpt.pt", url=url, page="https://example.invalid/page",
        licence="test-licence", size=len(data), sha256=hashlib.sha256(data).hexdigest(),
    )
    fields.update(overrides)
    return CheckpointInfo(**fields)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def flip_byte(path: Path, position: int) -> None:
    data = bytearray(path.read_bytes())
    data[position] ^= 0xFF
    path.write_bytes(bytes(data))


def assert_same_state(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    for key in expected:
        assert torch.equal(actual[key], expected[key]), key


# ---------------------------------------------------------------- registry and cache folder

def test_registry_checkpoints_name_configs_sizes_hashes_and_licences():
    from samed2.model import CONFIG_NAMES

    assert set(REGISTRY) == {
        "samed2", "sam2.1-hiera-tiny", "sam2.1-hiera-small", "sam2.1-hiera-base_plus", "sam2.1-hiera-large",
        "sam2-hiera-small", "medsam-lite", "medsam2",
    }
    for entry in REGISTRY.values():
        assert entry.config in CONFIG_NAMES
        assert entry.url.startswith("https://") and entry.licence
        assert entry.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", entry.sha256)
    assert REGISTRY["sam2.1-hiera-large"].size == 898_083_611
    assert REGISTRY["samed2"].sha256 is None and "no hash" in REGISTRY["samed2"].note
    assert REGISTRY["medsam2"].licence == "CC-BY-SA-4.0"
    lite = REGISTRY["medsam-lite"]
    assert (lite.size, lite.sha256[:12], lite.archive.size) == (39_370_479, "79d8c9dca6db", 36_580_895)


def test_cache_dir_prefers_argument_then_samed2_cache_then_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("SAMED2_CACHE", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir(tmp_path / "given") == tmp_path / "given"
    assert cache_dir() == tmp_path / "env"
    monkeypatch.delenv("SAMED2_CACHE")
    assert cache_dir() == tmp_path / "xdg" / "samed2"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == Path.home() / ".cache" / "samed2"


def test_importing_weights_and_cli_touches_no_network():
    script = (
        "import socket\n"
        "def refuse(*args): raise SystemExit('network touched at import')\n"
        "socket.socket.connect = refuse\n"
        "socket.create_connection = refuse\n"
        "import samed2.weights, samed2_tools.cli.weights, argparse\n"
        "samed2_tools.cli.weights.register(argparse.ArgumentParser().add_subparsers())\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------- downloads

def test_download_streams_checks_hash_and_renames_into_cache(server, cache, payload):
    entry = checkpoint_entry(server.add("/w.pt", payload), payload)
    seen = []
    path = download(entry, cache, progress=lambda done, total: seen.append((done, total)))
    assert path == cache / "test_ckpt.pt" and path.read_bytes() == payload
    assert not (cache / "test_ckpt.pt.part").exists()
    assert seen[-1] == (len(payload), len(payload))
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)
    assert read_manifest(cache)["test-ckpt"].sha256 == entry.sha256


def test_download_resumes_a_broken_transfer_with_range(server, cache, payload):
    entry = checkpoint_entry(server.add("/w.pt", payload, mode="cut_once"), payload)
    with pytest.raises(DownloadError, match="broke after .* resume"):
        download(entry, cache)
    part = cache / "test_ckpt.pt.part"
    kept = part.stat().st_size
    assert 0 < kept < len(payload) and not (cache / "test_ckpt.pt").exists()

    path = download(entry, cache)
    assert path.read_bytes() == payload
    last = server.requests_for("/w.pt")[-1].headers
    assert last["Range"] == f"bytes={kept}-" and last["Accept-Encoding"] == "identity"


def test_download_restarts_when_the_server_ignores_range(server, cache, payload):
    entry = checkpoint_entry(server.add("/w.pt", payload, mode="ignore_range"), payload)
    cache.mkdir()
    (cache / "test_ckpt.pt.part").write_bytes(b"stale bytes from another file")
    path = download(entry, cache)
    assert path.read_bytes() == payload
    assert server.requests_for("/w.pt")[0].headers["Range"] == "bytes=29-"


def test_download_with_wrong_hash_is_deleted(server, cache, payload):
    entry = checkpoint_entry(server.add("/w.pt", payload, mode="wrong_bytes"), payload)
    with pytest.raises(DownloadError, match="SHA-256 mismatch"):
        download(entry, cache)
    assert sorted(p.name for p in cache.iterdir()) == []


def test_download_of_wrong_size_is_refused(server, cache, payload):
    entry = checkpoint_entry(server.add("/w.pt", payload), payload, size=len(payload) + 10)
    with pytest.raises(DownloadError, match=f"offers {len(payload)} bytes"):
        download(entry, cache)
    assert not (cache / "test_ckpt.pt").exists()


def test_download_404_names_the_offline_import_command(server, cache, payload):
    entry = checkpoint_entry(server.add("/gone.pt", payload, mode="404"), payload)
    with pytest.raises(DownloadError, match=r"404.*samed2 weights import /path/to/test_ckpt.pt"):
        download(entry, cache)
    assert not (cache / "test_ckpt.pt").exists()


def test_download_refused_connection_is_a_clear_error(cache, payload):
    entry = checkpoint_entry(f"http://127.0.0.1:{closed_port()}/w.pt", payload)
    with pytest.raises(DownloadError, match="cannot reach 127.0.0.1.*connection refused.*offline"):
        download(entry, cache)


def test_download_follows_the_google_drive_confirmation_page(server, cache, payload):
    url = server.add("/download", payload, mode="drive_form") + "?id=abc&export=download&confirm=t"
    path = download(checkpoint_entry(url, payload), cache)
    assert path.read_bytes() == payload
    first, second = server.requests_for("/download")
    assert "uuid" not in first.query and second.query["uuid"] and second.query["id"] == "abc"


def test_download_reports_a_web_page_served_instead_of_the_file(server, cache, payload):
    entry = checkpoint_entry(server.add("/download", payload, mode="quota_page"), payload)
    with pytest.raises(DownloadError, match="sent a web page instead of test_ckpt.pt.*samed2 weights import"):
        download(entry, cache)
    assert list(cache.iterdir()) == []


def test_download_restarts_when_a_leftover_part_reaches_past_the_end(server, cache, payload):
    entry = checkpoint_entry(server.add("/w.pt", payload), payload, size=None)
    cache.mkdir()
    (cache / "test_ckpt.pt.part").write_bytes(bytes(len(payload)))
    assert download(entry, cache).read_bytes() == payload
    assert [r.headers.get("Range") for r in server.requests_for("/w.pt")] == [f"bytes={len(payload)}-", None]


def test_download_of_a_cached_file_rehashes_without_network(server, cache, payload):
    entry = checkpoint_entry(server.add("/w.pt", payload), payload)
    download(entry, cache)
    served = len(server.requests)
    assert download(entry, cache).read_bytes() == payload
    assert len(server.requests) == served


def test_download_replaces_a_corrupted_cached_file(server, cache, payload):
    entry = checkpoint_entry(server.add("/w.pt", payload), payload)
    path = download(entry, cache)
    flip_byte(path, 10)
    assert download(entry, cache).read_bytes() == payload


def test_download_without_published_hash_records_it_and_verify_checks_it(server, cache, tiny_checkpoint, tiny_config):
    data = tiny_checkpoint.read_bytes()
    entry = checkpoint_entry(server.add("/t.pt", data), data, config=tiny_config, size=None, sha256=None)
    path = download(entry, cache)
    assert read_manifest(cache)["test-ckpt"].sha256 == hashlib.sha256(data).hexdigest()
    assert [result.ok for result in verify("test-ckpt", cache)] == [True]

    flip_byte(path, len(data) // 2)
    [result] = verify("test-ckpt", cache)
    assert not result.ok and "differs" in result.message
    assert not path.exists()


def test_download_without_published_hash_refuses_another_architecture(server, cache, tiny_state, tmp_path, tiny_config):
    plain_sam2 = tmp_path / "plain_sam2.pt"
    torch.save({"model": {k: v for k, v in tiny_state.items() if ".adapter." not in k and ".fancy_fusion." not in k}},
               plain_sam2)
    data = plain_sam2.read_bytes()
    entry = checkpoint_entry(server.add("/o.pt", data), data, config=tiny_config, size=None, sha256=None)
    missing = r"not a usable test-ckpt checkpoint.*missing keys: image_encoder.trunk.blocks.0.adapter"
    with pytest.raises(DownloadError, match=missing):
        download(entry, cache)
    assert list(cache.iterdir()) == []


# ---------------------------------------------------------------- safe loading

def test_official_bare_and_safetensors_layouts_load_the_same_tensors(tmp_path):
    state = {"image_encoder.trunk.pos_embed": torch.randn(1, 8, 7, 7), "no_mem_embed": torch.randn(1, 1, 4)}
    torch.save({"model": state, "epoch": 3}, tmp_path / "official.pt")
    torch.save(state, tmp_path / "bare.pth")
    torch.save(state, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    save_file(state, str(tmp_path / "weights.safetensors"))
    for name in ("official.pt", "bare.pth", "legacy.pt", "weights.safetensors"):
        assert_same_state(load_state_dict_file(tmp_path / name), state)


class RunsCodeWhenUnpickled:
    """Unpickling this calls exec(), which creates a marker file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


def test_a_pickle_that_would_run_code_is_refused_and_never_run(tmp_path):
    armed = tmp_path / "armed_check"
    pickle.loads(pickle.dumps(RunsCodeWhenUnpickled(armed)))
    assert armed.exists(), "the payload must really run code when unpickled normally"

    marker = tmp_path / "marker"
    evil = RunsCodeWhenUnpickled(marker)
    torch.save({"model": {"w": torch.zeros(2)}, "extra": evil}, tmp_path / "wrapped.pt")
    torch.save(evil, tmp_path / "bare.pt")
    (tmp_path / "plain.pth").write_bytes(pickle.dumps({"w": evil}, protocol=2))
    (tmp_path / "plain5.pth").write_bytes(pickle.dumps({"w": evil}, protocol=5))
    for name in ("wrapped.pt", "bare.pt", "plain.pth"):
        with pytest.raises(WeightsError, match="refused to load .*other than tensors \\(exec\\)"):
            load_state_dict_file(tmp_path / name)
    with pytest.raises(WeightsError, match="refused to load .*safe loader does not accept"):
        load_state_dict_file(tmp_path / "plain5.pth")
    assert not marker.exists()


def test_a_pickle_named_safetensors_is_refused(tmp_path):
    torch.save({"w": torch.zeros(3)}, tmp_path / "model.safetensors")
    with pytest.raises(WeightsError, match="named .safetensors but holds a PyTorch"):
        load_state_dict_file(tmp_path / "model.safetensors")


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_a_truncated_checkpoint_is_a_clear_error(tmp_path, zip_format):
    path = tmp_path / "cut.pt"
    torch.save({"model": {"w": torch.randn(5000)}}, path, _use_new_zipfile_serialization=zip_format)
    path.write_bytes(path.read_bytes()[:-4000])
    with pytest.raises(WeightsError, match="truncated or corrupt"):
        load_state_dict_file(path)


def test_truncated_safetensors_and_empty_and_missing_files_are_clear_errors(tmp_path):
    save_file({"w": torch.randn(5000)}, str(tmp_path / "cut.safetensors"))
    (tmp_path / "cut.safetensors").write_bytes((tmp_path / "cut.safetensors").read_bytes()[:-100])
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(WeightsError, match="truncated or corrupt"):
        load_state_dict_file(tmp_path / "cut.safetensors")
    with pytest.raises(WeightsError, match="empty"):
        load_state_dict_file(tmp_path / "empty.pt")
    with pytest.raises(WeightsError, match="not found"):
        load_state_dict_file(tmp_path / "absent.pt")


def test_a_file_that_is_not_a_state_dict_is_refused(tmp_path):
    torch.save({"model": {"w": torch.zeros(1), "step": 5}}, tmp_path / "mixed.pt")
    with pytest.raises(WeightsError, match="1 entries are not tensors \\(step\\)"):
        load_state_dict_file(tmp_path / "mixed.pt")


def test_check_state_dict_names_missing_unexpected_and_misshaped_keys():
    expected = {f"block.{i}.weight": torch.Size([4]) for i in range(15)} | {"head.weight": torch.Size([2, 3])}
    state = {"head.weight": torch.zeros(3, 2), "extra.bias": torch.zeros(1)}
    with pytest.raises(WeightsError) as error:
        check_state_dict(state, expected, label="test.pt")
    message = str(error.value)
    assert "15 missing keys" in message and "and 5 more" in message and message.count("block.") == 10
    assert "1 unexpected keys: extra.bias" in message
    assert "1 shape mismatches: head.weight (3, 2) vs model (2, 3)" in message
    check_state_dict({"head.weight": torch.zeros(2, 3)}, {"head.weight": torch.Size([2, 3])})


# ---------------------------------------------------------------- loading into the model

def test_load_weights_fills_the_model_strictly(tiny_checkpoint, tiny_state, tiny_config):
    from samed2.model import build_model

    model = load_weights(build_model(tiny_config), tiny_checkpoint)
    assert_same_state(model.state_dict(), tiny_state)


def test_a_checkpoint_for_another_architecture_leaves_the_model_untouched(tiny_state, tiny_config):
    from samed2.model import build_model

    model = build_model(tiny_config)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    wider = dict(tiny_state, **{"no_mem_embed": torch.zeros(1, 1, 64)})
    with pytest.raises(WeightsError, match=r"1 shape mismatches: no_mem_embed \(1, 1, 64\) vs model \(1, 1, 32\)"):
        load_weights(model, wider)
    assert_same_state(model.state_dict(), before)


def test_golden_samed2_state_loads_strictly_into_the_tiny_config(golden_dir, tiny_config):
    from safetensors.torch import load_file

    from samed2.model import build_model

    golden = load_file(str(golden_dir / "samed2_tiny_state.safetensors"))
    model = load_weights(build_model(tiny_config), golden_dir / "samed2_tiny_state.safetensors")
    assert_same_state(model.state_dict(), golden)


# ---------------------------------------------------------------- import, verify, list, resolve

def test_import_copies_into_the_cache_after_a_strict_check(tiny_checkpoint, tiny_config, tiny_state, cache):
    path = import_checkpoint(tiny_checkpoint, name="my-tiny", config=tiny_config, cache_dir=cache)
    assert path == cache / "my-tiny.pt" and path.read_bytes() == tiny_checkpoint.read_bytes()
    [status] = [s for s in list_weights(cache) if s.name == "my-tiny"]
    assert status.verified and status.state == "cached" and status.hash_source == "recorded"
    assert status.sha256 == hashlib.sha256(tiny_checkpoint.read_bytes()).hexdigest()
    assert_same_state(load_model("my-tiny", cache).state_dict(), tiny_state)


def test_import_refuses_another_architecture_and_leaves_the_cache_alone(tmp_path, tiny_state, tiny_config, cache):
    source = tmp_path / "no_memory_encoder.pt"
    torch.save({"model": {k: v for k, v in tiny_state.items() if not k.startswith("memory_encoder.")}}, source)
    with pytest.raises(WeightsError, match="missing keys: memory_encoder."):
        import_checkpoint(source, name="broken", config=tiny_config, cache_dir=cache)
    assert not cache.exists() or list(cache.iterdir()) == []


def test_import_of_a_registry_name_demands_its_published_hash(tmp_path, cache):
    fake = tmp_path / "sam2.1_hiera_tiny.pt"
    torch.save({"model": {"w": torch.zeros(1)}}, fake)
    with pytest.raises(WeightsError, match="not the published sam2.1-hiera-tiny file.*--name my-sam2.1-hiera-tiny"):
        import_checkpoint(fake, cache_dir=cache)


def test_import_never_overwrites_a_registry_file_under_a_custom_name(tiny_checkpoint, tiny_config, cache):
    with pytest.raises(WeightsError, match="sam2.1_hiera_tiny.pt is the cache file of sam2.1-hiera-tiny"):
        import_checkpoint(tiny_checkpoint, name="sam2.1_hiera_tiny", config=tiny_config, cache_dir=cache)


@pytest.mark.parametrize("given_name", ["tiny_model.pt", "test-ckpt.pt"], ids=["file-name", "checkpoint-name"])
def test_import_recognises_a_registry_file_by_its_name(monkeypatch, tmp_path, tiny_checkpoint, tiny_config, cache,
                                                       given_name):
    entry = checkpoint_entry("https://example.invalid/t.pt", b"", config=tiny_config, filename="tiny_model.pt",
                             size=None, sha256=None)
    monkeypatch.setitem(REGISTRY, "test-ckpt", entry)
    source = tmp_path / "given" / given_name
    source.parent.mkdir()
    source.write_bytes(tiny_checkpoint.read_bytes())
    path = import_checkpoint(source, cache_dir=cache)
    assert path == cache / "tiny_model.pt"
    assert cached_checkpoint("test-ckpt", cache) == path
    assert [result.ok for result in verify(None, cache)] == [True]


def test_a_file_put_in_the_cache_by_hand_is_verified_by_loading(monkeypatch, tiny_checkpoint, tiny_config, cache):
    entry = checkpoint_entry("https://example.invalid/t.pt", b"", config=tiny_config, filename="tiny_model.pt",
                             size=None, sha256=None)
    monkeypatch.setitem(REGISTRY, "test-ckpt", entry)
    cache.mkdir()
    (cache / "tiny_model.pt").write_bytes(tiny_checkpoint.read_bytes())
    [result] = verify("test-ckpt", cache)
    assert result.ok and "recorded" in result.message
    assert read_manifest(cache)["test-ckpt"].sha256 == hashlib.sha256(tiny_checkpoint.read_bytes()).hexdigest()


def test_missing_weights_name_the_download_and_import_commands(cache):
    commands = r"samed2 weights download samed2.*samed2 weights import /path/to/latest_epoch_0217.pth"
    with pytest.raises(WeightsError, match=commands):
        cached_checkpoint("samed2", cache)
    with pytest.raises(WeightsError, match="unknown checkpoint 'nope'"):
        cached_checkpoint("nope", cache)


def test_list_reports_partial_and_missing_downloads(cache):
    cache.mkdir()
    (cache / "sam2.1_hiera_tiny.pt.part").write_bytes(b"x" * 1000)
    states = {status.name: status for status in list_weights(cache)}
    assert states["sam2.1-hiera-tiny"].state == "partial"
    assert states["samed2"].state == "missing" and states["samed2"].hash_source == "none yet"
    assert states["sam2.1-hiera-large"].hash_source == "published"


# ---------------------------------------------------------------- command line

def test_cli_download_list_and_verify(monkeypatch, server, cache, payload, capsys):
    monkeypatch.setitem(REGISTRY, "test-ckpt", checkpoint_entry(server.add("/w.pt", payload), payload))
    assert cli_main(["weights", "download", "test-ckpt", "--cache-dir", str(cache)]) == 0
    assert capsys.readouterr().out.strip().endswith("test_ckpt.pt")

    assert cli_main(["weights", "list", "--cache-dir", str(cache)]) == 0
    [line] = [line for line in capsys.readouterr().out.splitlines() if line.startswith("test-ckpt")]
    assert "cached, verified" in line and "test-licence" in line and "0.3 MB" in line

    flip_byte(cache / "test_ckpt.pt", 5)
    assert cli_main(["weights", "verify", "--cache-dir", str(cache)]) == 2
    captured = capsys.readouterr()
    assert "FAILED test-ckpt" in captured.out and "1 of 1 checkpoints failed" in captured.err


def test_cli_import_with_a_json_config_then_verify(tmp_path, tiny_checkpoint, tiny_config, cache, capsys):
    config_file = tmp_path / "tiny.json"
    config_file.write_text(json.dumps({"model": tiny_config}))
    args = ["weights", "import", str(tiny_checkpoint), "--name", "tiny", "--config", str(config_file)]
    assert cli_main(args + ["--cache-dir", str(cache)]) == 0
    assert (cache / "tiny.pt").exists()
    assert cli_main(["weights", "verify", "tiny", "--cache-dir", str(cache)]) == 0
    assert "OK     tiny" in capsys.readouterr().out


def test_cli_errors_exit_2_with_a_one_line_message(tmp_path, cache, capsys):
    assert cli_main(["weights", "download", "nope", "--cache-dir", str(cache)]) == 2
    assert "unknown checkpoint 'nope'" in capsys.readouterr().err
    assert cli_main(["weights", "import", str(tmp_path / "absent.pt"), "--cache-dir", str(cache)]) == 2
    assert "no such file" in capsys.readouterr().err


def test_best_model_is_samed2_when_cached_else_medsam_lite_and_needs_no_torch(tmp_path):
    """The default model of segment, eval, web and the Slicer module, and the list of models the panel
    shows when it opens, asked without importing torch."""
    import subprocess
    import sys

    from samed2.weights import REGISTRY, best_model

    assert best_model(tmp_path) == "medsam-lite", "nothing cached: MedSAM-Lite, which a download can fetch"
    (tmp_path / REGISTRY["medsam-lite"].filename).write_bytes(b"x")
    assert best_model(tmp_path) == "medsam-lite"
    (tmp_path / REGISTRY["samed2"].filename).write_bytes(b"x")
    assert best_model(tmp_path) == "samed2"
    check = ("import sys; from samed2.weights import best_model, list_weights; best_model('.'); list_weights('.'); "
             "assert 'torch' not in sys.modules")
    run = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
