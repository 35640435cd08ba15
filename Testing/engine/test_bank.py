"""SAMed-2's confidence bank: safe import of the official pickle, safetensors files, retrieval without re-stacking."""
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from samed2 import bank as bank_module
from samed2.bank import KERNELS, ConfidenceBank, KeyKernel, image_key, import_reference_bank, read_reference_bank
from samed2.errors import InputError, WeightsError

SAMED2 = [str(Path(sys.executable).with_name("samed2"))]


def reference_entries(n=6, c=4, side=8, feat=8, seed=0):
    """Entries in the reference's layout: [memory (1, C, h, w), position (1, C, h, w), IoU, image embedding]."""
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, c, side, side, generator=gen).bfloat16(), torch.randn(1, c, side, side, generator=gen),
             torch.rand((), generator=gen), torch.randn(feat * side * side, generator=gen)] for _ in range(n)]


class Payload:
    """Unpickling this runs code: it would create the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_bank_import_reads_the_official_formats(tmp_path, writer):
    entries = reference_entries()
    source = tmp_path / "bank.pkl"
    if writer == "pickle":
        source.write_bytes(pickle.dumps(entries))
    else:
        torch.save(entries, source)
    bank = import_reference_bank(source, tmp_path / "bank.safetensors")
    assert len(bank) == 6
    loaded = ConfidenceBank.load(tmp_path / "bank.safetensors")
    assert torch.equal(loaded.features, torch.cat([e[0] for e in entries]))
    assert torch.allclose(loaded.ious, torch.stack([e[2] for e in entries]))
    norms = loaded.keys.float().norm(dim=1)
    assert torch.allclose(norms, torch.ones(6), atol=1e-3), "keys are stored unit-normalised"


def test_bank_import_refuses_an_output_it_cannot_write_before_reading(tmp_path):
    source = tmp_path / "bank.pkl"
    source.write_bytes(pickle.dumps(reference_entries()))
    with pytest.raises(InputError, match="unsupported output format 'bank.pt': use .safetensors"):
        import_reference_bank(source, tmp_path / "bank.pt")
    with pytest.raises(InputError, match="output folder does not exist"):
        import_reference_bank(source, tmp_path / "missing" / "bank.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bank.pkl"]


def test_bank_import_refuses_files_that_are_not_banks_with_a_message(tmp_path):
    """Random bytes, random bytes behind a pickle header, a broken zip, a pickled number: each a
    WeightsError naming the file (malformed pickles raise a dozen error types inside pickle), and
    the command exits 2 with no output file."""
    rng = np.random.default_rng(0)
    sources = []
    for i in range(60):
        body = rng.integers(0, 256, 3000, dtype=np.uint8).tobytes()
        sources.append((f"random{i}.bin", body if i % 2 else b"\x80\x02" + body))
    sources += [("number.pkl", pickle.dumps(1)), ("broken.zip", _zip_with(b"garbage"))]
    for name, content in sources:
        (tmp_path / name).write_bytes(content)
        with pytest.raises(WeightsError, match=name):
            import_reference_bank(tmp_path / name, tmp_path / "out.safetensors")
    run = subprocess.run([*SAMED2, "bank", "import", str(tmp_path / "random1.bin"), "--out",
                          str(tmp_path / "out.safetensors")], capture_output=True, text=True)
    assert run.returncode == 2 and run.stderr.startswith("error: ") and "Traceback" not in run.stderr
    assert not (tmp_path / "out.safetensors").exists()


def _zip_with(data: bytes) -> bytes:
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/data.pkl", data)
    return buffer.getvalue()


def test_bank_file_is_readable_as_the_umask_says(tmp_path):
    old = os.umask(0o022)
    try:
        import_reference_bank(_pickled(reference_entries(), tmp_path / "bank.pkl"), tmp_path / "bank.safetensors")
    finally:
        os.umask(old)
    assert (tmp_path / "bank.safetensors").stat().st_mode & 0o777 == 0o644


def _pickled(entries, path: Path) -> Path:
    path.write_bytes(pickle.dumps(entries))
    return path


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_bank_import_refuses_a_malicious_pickle_without_running_it(tmp_path, writer):
    marker = tmp_path / "marker"
    source = tmp_path / "evil.pkl"
    payload = [reference_entries(1)[0] + [Payload(marker)]]
    if writer == "pickle":
        source.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, source)
    with pytest.raises(WeightsError, match="refusing"):
        read_reference_bank(source)
    assert not marker.exists()
    run = subprocess.run([*SAMED2, "bank", "import", str(source), "--out", str(tmp_path / "out.safetensors")],
                         capture_output=True, text=True)
    assert run.returncode == 2 and "refusing" in run.stderr
    assert not marker.exists() and not (tmp_path / "out.safetensors").exists()


def test_bank_load_refuses_a_pickle_posing_as_safetensors(tmp_path):
    fake = tmp_path / "bank.safetensors"
    fake.write_bytes(pickle.dumps(reference_entries(2)))
    with pytest.raises(WeightsError, match="safetensors"):
        ConfidenceBank.load(fake)


def test_bank_retrieval_uses_the_stacked_keys_and_the_reference_memory_layout():
    bank = ConfidenceBank.from_entries(reference_entries(n=10, feat=8))
    keys_before = bank.keys.data_ptr()
    features = torch.randn(2, 8, 8, 8)
    chosen = bank.select(features)
    assert chosen.shape == (2, 2)
    memory, pos = bank.memory(chosen, device="cpu")
    assert memory.shape == (2, 2 * 64, 4) and pos.shape == memory.shape
    assert bank.keys.data_ptr() == keys_before, "no re-stacking per call"
    # image 0 attends to the first choice of both images, interleaved token by token
    first = bank.features[chosen[:, 0]].float().flatten(2).transpose(1, 2)
    assert torch.equal(memory[0, 0::2], first[0]) and torch.equal(memory[0, 1::2], first[1])


def test_bank_update_replaces_the_most_similar_entry_only_when_more_confident():
    bank = ConfidenceBank.from_entries(reference_entries(n=4, feat=8), capacity=4)
    target = 2
    image = bank.keys[target].float().reshape(1, 64, 8).transpose(1, 2).reshape(1, 8, 8, 8)  # key of entry 2
    new_memory = torch.randn(1, 4, 8, 8)
    bank.update(new_memory, new_memory, torch.tensor([-1.0]), image)
    assert len(bank) == 4 and not torch.equal(bank.features[-1].float(), new_memory[0]), "less confident: ignored"
    old_ious = bank.ious.clone()
    bank.update(new_memory, new_memory, torch.tensor([5.0]), image)
    assert len(bank) == 4
    assert torch.equal(bank.ious[:3], torch.cat([old_ious[:target], old_ious[target + 1:]]))
    assert bank.ious[-1].item() == 5.0


def test_bank_grows_until_capacity(tmp_path):
    bank = ConfidenceBank.empty(key_dim=8 * 64, mem_shape=(4, 8, 8), capacity=3)
    for i in range(5):
        bank.update(torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8), torch.tensor([float(i)]), torch.randn(1, 8, 8, 8))
    assert len(bank) == 3
    bank.save(tmp_path / "b.safetensors")
    again = ConfidenceBank.load(tmp_path / "b.safetensors")
    assert again.capacity == 3 and torch.equal(again.ious, bank.ious)
    assert not list(tmp_path.glob("*.tmp"))


def near_tie_bank(seed: int, kernel=bank_module.FILE_KERNEL, entries: int = 40, channels: int = 16, side: int = 16):
    """Entries whose cosines with a query (all about 0.8) lie close together, with equal confidence:
    for some seeds only a float32 comparison tells the best apart."""
    gen = torch.Generator().manual_seed(seed)
    query = torch.randn(1, channels, side, side, generator=gen)
    noise = torch.randn(entries, channels, side, side, generator=gen)
    stored = 1.333 * query + noise * (1 + 0.001 * torch.rand(entries, 1, 1, 1, generator=gen))
    memory = torch.zeros(entries, 2, side, side, dtype=torch.bfloat16)
    return query, ConfidenceBank(image_key(stored), memory, memory.clone(), torch.full((entries,), 0.9), kernel=kernel)


def float32_choice(bank, query, k):
    score = (image_key(query) @ bank.keys.float().t()).clamp(min=0) + bank.ious.sigmoid()
    return score.topk(k, dim=1).indices


@pytest.mark.parametrize("kernel", KERNELS, ids=lambda k: k.name)
def test_bank_selection_is_the_float32_choice_among_near_ties(kernel):
    rough_alone_wrong = 0
    for seed in range(20):
        query, bank = near_tie_bank(seed, kernel)
        exact = (image_key(query) @ bank.keys.float().t())[0]
        rough_alone_wrong += int(bank.similarity(image_key(query))[0].argmax() != exact.argmax())
        assert bank.select(query, k=1)[0, 0] == exact.argmax()
        assert bank.select(query, k=3)[0].tolist() == exact.topk(3).indices.tolist()
    assert rough_alone_wrong, "for some seeds the kernel's similarity alone picks another entry"


@pytest.mark.parametrize("kernel", KERNELS, ids=lambda k: k.name)
def test_bank_kernel_stays_within_its_error_bound(kernel):
    gen = torch.Generator().manual_seed(1)
    keys = F.normalize(torch.randn(64, 4096, generator=gen), dim=1)
    bank = ConfidenceBank(keys, torch.zeros(64, 1, 1, 1), torch.zeros(64, 1, 1, 1), torch.zeros(64), kernel=kernel)
    query = F.normalize(torch.randn(2, 4096, generator=gen), dim=1)
    assert bank.keys.dtype == kernel.dtype
    error = (bank.similarity(query) - query @ bank.keys.float().t()).abs().max()
    assert error <= kernel.error / 4


def test_bank_kernel_choice_skips_a_fast_kernel_that_is_inaccurate(monkeypatch):
    class Sloppy(KeyKernel):
        def __call__(self, query, keys):  # fastest of all, but off by twice the bound
            return torch.full((len(query), len(keys)), 2 * self.error)
    monkeypatch.setattr(bank_module, "KERNELS", (Sloppy(torch.bfloat16),) + KERNELS)
    chosen = bank_module.fastest_kernel.__wrapped__(1024)
    assert chosen in KERNELS and not isinstance(chosen, Sloppy)


def test_bank_load_keeps_one_copy_of_the_keys_in_the_kernel_chosen_here(tmp_path):
    bank = ConfidenceBank.from_entries(reference_entries(n=40, feat=8))
    assert bank.keys.dtype == torch.float16, "imported and saved keys are half precision"
    bank.save(tmp_path / "bank.safetensors")
    loaded = ConfidenceBank.load(tmp_path / "bank.safetensors")
    assert loaded.kernel == bank_module.fastest_kernel(bank.keys.shape[1], "cpu")
    assert loaded.keys.dtype == loaded.kernel.dtype
    assert torch.equal(loaded.keys, bank.keys.to(loaded.kernel.dtype))
    query = torch.randn(2, 8, 8, 8)
    assert torch.equal(loaded.select(query), float32_choice(loaded, query, 2))
    loaded.save(tmp_path / "again.safetensors")  # a bank with bfloat16 keys saves and loads too
    assert torch.equal(ConfidenceBank.load(tmp_path / "again.safetensors").keys.float(), loaded.keys.float())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_bank_keys_convert_in_place(dtype):
    keys = F.normalize(torch.randn(40, 256), dim=1).half()
    expected = keys.to(dtype)
    converted = bank_module.converted_in_place(keys, dtype)
    assert converted.dtype == dtype and torch.equal(converted, expected)
    assert converted.data_ptr() == keys.data_ptr(), "no second copy of the keys"


# ---- the compact index ----------------------------------------------------------------------

def correlated_features(n: int, channels: int, side: int, seed: int) -> torch.Tensor:
    """Smooth feature maps whose channels share a few patterns, all alike (as a CT's slices are)."""
    gen = torch.Generator().manual_seed(seed)
    patterns = torch.randn(8, channels, generator=gen)
    fields = F.interpolate(torch.randn(n, 8, side // 4, side // 4, generator=gen), size=(side, side), mode="bilinear")
    common = F.interpolate(torch.randn(1, channels, 4, 4, generator=gen), size=(side, side), mode="bilinear")
    return torch.einsum("bkhw,kc->bchw", fields, patterns) + 3 * common


@pytest.mark.parametrize("kind", ["random", "correlated"])
def test_bank_index_estimates_cosines_within_its_margin(kind):
    channels, side = 256, 16
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(48, channels, side, side, generator=gen) if kind == "random" else \
        correlated_features(48, channels, side, 0)
    keys = image_key(features)
    index = bank_module.KeyIndex.for_keys(keys.shape[1], side * side)
    assert index.width == keys.shape[1] // bank_module.INDEX_REDUCTION
    rows = index.rows(keys, torch.float32)
    error = rows @ rows.t() - keys @ keys.t()
    assert error.abs().max() <= index.margin, "within the margin"
    assert abs(float(error.mean())) < 0.1 * index.margin, "without bias"


def test_bank_index_is_made_only_for_keys_it_can_index():
    assert bank_module.KeyIndex.for_keys(256 * 64, 64) is not None
    assert bank_module.KeyIndex.for_keys(8 * 64, 64) is None, "8 channels: fewer than the reduction"
    assert bank_module.KeyIndex.for_keys(96 * 64, 64) is None, "96 channels: no Hadamard matrix"


def test_bank_index_choice_is_the_float32_choice_reading_few_keys(monkeypatch):
    """Entries from unlike to near copies of the queries: the choice is float32's and only the keys
    the index cannot rule out are read."""
    channels, side, entries = 256, 32, 120
    gen = torch.Generator().manual_seed(3)
    features = correlated_features(entries, channels, side, 1)
    queries = features[:4] + 0.3 * torch.randn(4, channels, side, side, generator=gen)
    stored = features * torch.linspace(0.2, 1.0, entries).reshape(-1, 1, 1, 1) + \
        torch.randn(entries, channels, side, side, generator=gen) * torch.linspace(3, 0.5, entries).reshape(-1, 1, 1, 1)
    memory = torch.zeros(entries, 2, side, side, dtype=torch.bfloat16)
    bank = ConfidenceBank(image_key(stored), memory, memory.clone(), torch.rand(entries, generator=gen))
    assert bank.index is not None and bank.index_rows.shape == (entries, bank.index.width)
    read = []
    exact_similarity = bank.exact_similarity
    monkeypatch.setattr(bank, "exact_similarity", lambda keys, chosen: read.append(len(chosen)) or
                        exact_similarity(keys, chosen))
    for q in range(4):
        query = queries[q: q + 1]
        assert bank.select(query, k=1)[0].tolist() == float32_choice(bank, query, 1)[0].tolist()
        assert bank.select(query, k=3)[0].tolist() == float32_choice(bank, query, 3)[0].tolist()
    assert max(read) < entries / 4, f"keys read per selection: {read} of {entries}"


def test_bank_index_follows_updates():
    bank = ConfidenceBank.empty(key_dim=16 * 64, mem_shape=(4, 8, 8), capacity=3)
    for i in range(5):
        bank.update(torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8), torch.tensor([float(i)]),
                    torch.randn(1, 16, 8, 8))
        assert torch.equal(bank.index_rows, bank.index.rows(bank.keys, bank.kernel.dtype))
    assert len(bank) == 3
