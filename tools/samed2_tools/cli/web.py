"""`samed2 web`: the segmentation tool in a browser (trame-slicer over the Slicer module's Logic)."""
import ipaddress
import logging
import secrets
import sys
from pathlib import Path

from samed2_tools.cli.options import add_dicomweb_options

LOOPBACK = "127.0.0.1"


def register(sub) -> None:
    p = sub.add_parser("web", help="serve the interactive segmentation tool to a web browser",
                       description="Serves slice views of IMAGE (a volume file or a DICOM series folder) to a browser: "
                                   "clicks become prompts, the segment updates, propagate, undo and export into "
                                   "--out. Needs the web extra (trame-slicer); listens on 127.0.0.1 unless --host and "
                                   "--token are given.")
    p.add_argument("image", help="volume file (.nii.gz, .nrrd, ...), DICOM series folder or DICOMweb series URL "
                                 "(then the page can also save the DICOM-SEG to that server)")
    p.add_argument("--model", help="weights name from the cache (default: SAMed-2 when cached, else MedSAM-Lite; see "
                                        "`samed2 weights list`)")
    p.add_argument("--out", default=".", help="folder the Export button writes into (default: current folder)")
    p.add_argument("--host", default=LOOPBACK, help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 picks a free one)")
    p.add_argument("--token", help="access token the page must present (required with a non-loopback --host; open "
                                   "http://HOST:PORT/?secret=TOKEN)")
    p.add_argument("--cache-dir", help="weights cache (default: $SAMED2_CACHE or ~/.cache/samed2)")
    p.add_argument("--device", default="auto")
    add_dicomweb_options(p)
    p.set_defaults(func=run)


def check_exposure(host: str, token) -> None:
    """Listening beyond this machine needs an access token."""
    from samed2.errors import InputError

    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        raise InputError(f"--host {host!r} is not an IP address") from None
    if not loopback and not token:
        raise InputError(f"--host {host} makes the tool reachable from other machines: give an access token with "
                         "--token (and put it behind your site's TLS reverse proxy)")
    if token is not None and len(token) < 16:
        raise InputError("--token must be at least 16 characters long (e.g. python -c 'import secrets; "
                         "print(secrets.token_urlsafe())')")


def run(args) -> int:
    from samed2.errors import OutputError

    check_exposure(args.host, args.token)
    out = Path(args.out).resolve()
    if not out.is_dir():
        raise OutputError(f"--out {out} is not a folder")
    for chatty in ("trame_server", "trame_client", "wslink", "aiohttp"):  # they log each page token at INFO
        logging.getLogger(chatty).setLevel(logging.WARNING)
    from samed2_tools.dicomweb import dicom_folder

    with dicom_folder(args.image, args.ca_bundle) as image:
        serve(args, image, out)
    return 0


def serve(args, image: Path, out: Path) -> None:
    from samed2 import weights
    from samed2_web.app import SAMed2WebApp
    from samed2_web.pacs import Pacs

    pacs = Pacs.of_series(args.image, args.ca_bundle)
    app = SAMed2WebApp(image, out, weights.cache_dir(args.cache_dir), model=args.model, device=args.device, pacs=pacs)
    token = args.token or secrets.token_urlsafe()
    sys.argv = sys.argv[:1]  # trame reads its own options from the command line: ours are given below
    app.server.cli.set_defaults(authKey=token)  # the page must present it (wslink's session secret)
    app.server.controller.on_server_ready.add(
        lambda **_: print(f"Open in a browser: http://{args.host}:{app.server.port}/?secret={token}", flush=True))
    app.server.start(host=args.host, port=args.port, open_browser=False, show_connection_info=False)
