"""A real Orthanc (Debian's `orthanc` + `orthanc-dicomweb`, installed by .ci/install) for the DICOMweb
tests: its own free 127.0.0.1 port, its storage in a temporary folder, no DICOM (DIMSE) port."""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

import requests

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
START_TIMEOUT_S = 30


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Orthanc:
    """One Orthanc process; `users` ({name: password}) switches HTTP basic authentication on."""

    def __init__(self, folder: Path, users: dict | None = None):
        self.folder = folder
        self.port = free_port()
        self.users = users or {}
        self.root = f"http://127.0.0.1:{self.port}/dicom-web"
        self.process = None

    def start(self) -> Orthanc:
        storage = self.folder / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        config = {"Name": "samed2-test", "HttpPort": self.port, "StorageDirectory": str(storage),
                  "IndexDirectory": str(storage), "DicomServerEnabled": False, "RemoteAccessAllowed": False,
                  "AuthenticationEnabled": bool(self.users), "RegisteredUsers": self.users,
                  "Plugins": [str(DICOMWEB_PLUGIN)], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}
        config_file = self.folder / "orthanc.json"
        config_file.write_text(json.dumps(config))
        self.log = open(self.folder / "orthanc.log", "w")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen([ORTHANC, str(config_file)], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited at start: {(self.folder / 'orthanc.log').read_text()[-2000:]}")
            try:
                requests.get(f"http://127.0.0.1:{self.port}/system", timeout=1)
                return self
            except requests.ConnectionError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer on port {self.port} within {START_TIMEOUT_S} s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.log.close()

    def upload(self, files) -> None:
        """Stores DICOM files through Orthanc's REST API (not DICOMweb, which is what is tested)."""
        auth = next(iter(self.users.items()), None)
        for path in files:
            answer = requests.post(f"http://127.0.0.1:{self.port}/instances", data=Path(path).read_bytes(),
                                   auth=auth, timeout=30)
            answer.raise_for_status()


class TlsProxy:
    """HTTPS on a free 127.0.0.1 port, in a thread, passing GET requests on to a plain-HTTP server: the
    TLS a site's reverse proxy puts in front of its PACS (Debian's Orthanc 1.10 drops TLS connections).
    `certificate` is a PEM file with the key and a self-signed certificate for 127.0.0.1."""

    def __init__(self, target: str, certificate: Path):
        import ssl
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Forward(BaseHTTPRequestHandler):
            def do_GET(self):
                answer = requests.get(target + self.path, headers={"Accept": self.headers.get("Accept", "*/*")},
                                      timeout=30)
                self.send_response(answer.status_code)
                self.send_header("Content-Type", answer.headers.get("Content-Type", "application/octet-stream"))
                self.send_header("Content-Length", str(len(answer.content)))  # requests took off any gzip
                self.end_headers()
                self.wfile.write(answer.content)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Forward)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(certificate)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """(key and certificate, certificate) PEM files for 127.0.0.1, made with openssl."""
    key, certificate = folder / "key.pem", folder / "certificate.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(certificate), "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    both = folder / "server.pem"
    both.write_text(key.read_text() + certificate.read_text())
    return both, certificate
