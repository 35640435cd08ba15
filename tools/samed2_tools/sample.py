"""The public sample used by `samed2 demo`: TotalSegmentator's 20-slice abdominal CT series (Apache-2.0).

Fetched on request only, checked against the SHA-256 of every file, cached beside the weights. By
default it comes from TotalSegmentator's source distribution on PyPI, which carries the series among
its test files (PyPI is reachable where GitHub is not); `base_url` fetches the files one by one instead.
"""
import tarfile
from pathlib import Path
from typing import Optional

from samed2.errors import DownloadError

SAMPLE_ARCHIVE_URL = ("https://files.pythonhosted.org/packages/c3/53/7d654d2ec3fcb801ae54d318b0ffc18021aed528bf4e4df0753"
                      "caf0c8a73/totalsegmentator-2.18.0.tar.gz")
SAMPLE_ARCHIVE_HASH = "sha256:5d4223ef93973bc36d710869d11e7742ead2c154c72f7f9edcaaadd5b6c4bd03"
SAMPLE_ARCHIVE_FOLDER = "totalsegmentator-2.18.0/tests/reference_files/example_ct_dicom/"
SAMPLE_FILES = {
    "CT.1.3.12.2.1107.5.1.4.60064.30000022120808113428000016573": "sha256:4c5633409fa4d3edf6871e5684e9e1b10325b4d0949997582f43b23a684d0dc4",
    "CT.1.3.12.2.1107.5.1.4.60064.30000022120808113428000016574": "sha256:9148f91127145497f4d6c6f0780f9452504cd7fe5088ec8f2bf2b21800c731ff",
    "CT.1.3.12.2.1107.5.1.4.60064.30000022120808113428000016575": "sha256:3edaccec892e0821440cbefe3d5465923bb5146c316cbaf58f578d962f120484",
    "CT.1.3.12.2.1107.5.1.4.60064.30000022120808113428000016576": "sha256:9b68685f0c5f9bfcfc2c397f4fadf431da288d7422ca72e7d9031d4e039418cd",
    "CT.1.3.12.2.1107.5.1.4.60064.30000022120808113428000016577": "sha256:c8d2c0dc05e414d47d3652c658d8fecc20c3cf7ce106c10d84ad033d39700bcc",
    "CT.1.3.12.2.1107.5.1.4.60064.30000022120808113428000016578": "sha256:0ee2c1d58e06cedd91483ca35c04da3c26fea0dbe88aaf1eaa950b57f38357d6",
    "CT.1.3.12.2.1107.5.1.4.60064.30000022120808113428000016579": "sha256:c76cf0818d4215b92883d109b8a0b62ae0a4d81637eed98738f9c62b6f49bb72",
    "CT.1.3.12.2.1107.5.1.4.60064.30000022120808113428000016580": "sha256:106e20514fd3ca66895e14dbfba96c01c1195e4ed890c035d4368dd71f3ee116",
    "CT.1.3.12.2.1107.5.1.4.60064.30000022120808113428000016581": "sha256:5804e6c4a50f4d5b20040ac82a1c6d79cba5f7267d71f10b0a1b49eda1bc13ff",
    "CT.1.3.12.2.1107.5.1.4.60064.30000022120808113428000016582": "sha256:bef219a16b22949224de4581a2d288863b2585d29556ac24021f03307378cb39",
    "CT.1.3.12.2.1107.5.1.4.60064.30000022120808113428000016583": "sha256:9de5a49e880417d5330fe299115fdb95831a98234216a31c5c0e9a0be9a6dcd3",
    "CT.1.3.12.2.1107.5.1.4.60064.30000022120808113428000016584": "sha256:fa00c8d81ec8aa0d0cfc4e05343782c3a75a4c60df8cccf9ff5db42ac454e61d",
    "CT.1.3.12.2.1107.5.1.4.60064.30000022120808113428000016585": "sha256:ebba0900b0f728db0c94c769db3e5ca38a0cd916386a727541eb3e56350770e5",
    "CT.1.3.12.2.1107.5.1.4.60064.30000022120808113428000016586": "sha256:f084ec95cfba25efb7cbe86e8b4966b051904037e8385f58fe398c5475693b89",
    "CT.1.3.12.2.1107.5.1.4.60064.30000022120808113428000016587": "sha256:20a9b88a30ea8a824ac65cb19c1ebf80964b41ff476497706ff2a286e5f27a25",
    "CT.1.3.12.2.1107.5.1.4.60064.30000022120808113428000016588": "sha256:2a515d3b60f3ff733aac1fc5414206c331e3ed2ccef8c2e0c30b844c538e3ed8",
    "CT.1.3.12.2.1107.5.1.4.60064.30000022120808113428000016589": "sha256:5880669f1bc36b09cad4bdf487992ec415da0afa014e927efc282e612f467574",
    "CT.1.3.12.2.1107.5.1.4.60064.30000022120808113428000016590": "sha256:7af4dd5b5766a87368939116b91f90d989820e7b2237fb9bcd10d47db0960875",
    "CT.1.3.12.2.1107.5.1.4.60064.30000022120808113428000016591": "sha256:671306f4462ae881976c18c6a2d8a1567279fb0166ef0e9e8a41271fac9c1cbb",
    "CT.1.3.12.2.1107.5.1.4.60064.30000022120808113428000016592": "sha256:fdb76ad5272f074e07cc81509604fd163f2f8a9903d34b16ba6f078250373c51",
}
# A box around the liver on the series' middle slice, in RAS millimetres (x0, y0, x1, y1, z).
LIVER_BOX_RAS = (150.0, 250.0, -18.0, 68.0, -784.5)


def fetch_sample(cache: Path, base_url: Optional[str] = None) -> Path:
    """The sample series folder, fetching any missing or damaged file (from PyPI, or file by file
    from `base_url`)."""
    import pooch
    import requests

    folder = Path(cache) / "samples" / "totalseg_example_ct_dicom"
    source = base_url or SAMPLE_ARCHIVE_URL
    try:
        if base_url is None and not _intact(folder):
            _unpack_archive(pooch.retrieve(SAMPLE_ARCHIVE_URL, SAMPLE_ARCHIVE_HASH, path=folder.parent), folder)
        fetcher = pooch.create(path=folder, base_url=base_url or "", registry=SAMPLE_FILES, retry_if_failed=2)
        for name in SAMPLE_FILES:
            fetcher.fetch(name)
    except (requests.RequestException, ValueError, OSError, tarfile.TarError) as exc:
        raise DownloadError(
            f"could not fetch the sample CT from {source} ({exc}); on an offline machine run "
            "`samed2 segment YOUR_IMAGE --box X0,Y0,X1,Y1,Z --out mask.nii.gz` on an image of your own") from None
    return folder


def _intact(folder: Path) -> bool:
    import pooch

    return all((folder / name).is_file() and pooch.file_hash(str(folder / name)) == digest.split(":")[1]
               for name, digest in SAMPLE_FILES.items())


def _unpack_archive(archive: str, folder: Path) -> None:
    """The series' files out of the (verified) source archive, which is then deleted; each file is
    checked against its own hash when the caller fetches it."""
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as opened:
        for name in SAMPLE_FILES:
            source = opened.extractfile(SAMPLE_ARCHIVE_FOLDER + name)
            (folder / name).write_bytes(source.read())
    Path(archive).unlink()
