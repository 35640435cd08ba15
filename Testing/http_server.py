"""A real HTTP file server on 127.0.0.1, run in a thread by the tests.

Each served file has a mode:
- "normal": 200, or 206 for a `Range: bytes=N-` request (416 past the end);
- "cut_once": the first transfer stops half way and the connection is dropped; later ones are normal;
- "wrong_bytes": same length, different content;
- "404": not found;
- "ignore_range": always the whole file with 200, whatever the Range header says;
- "drive_form": like Google Drive for large files: an HTML page whose form (with a `uuid` field) leads
  to the file; a request carrying `uuid` gets the file;
- "quota_page": an HTML page with no download form (as Google Drive answers when its quota is exceeded).
Every request is recorded (path, query, headers) for assertions.
"""
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

MODES = {"normal", "cut_once", "wrong_bytes", "404", "ignore_range", "drive_form", "quota_page"}


@dataclass
class Served:
    data: bytes
    mode: str
    transfers: int = 0


@dataclass
class Request:
    path: str
    query: dict
    headers: dict


@dataclass
class FileServer:
    files: dict = field(default_factory=dict)
    requests: list = field(default_factory=list)

    def __enter__(self) -> "FileServer":
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()

    def add(self, path: str, data: bytes, mode: str = "normal") -> str:
        """Serve `data` at `path` in `mode`; returns its URL."""
        assert mode in MODES, mode
        self.files[path] = Served(data, mode)
        host, port = self._httpd.server_address
        return f"http://{host}:{port}{path}"

    def requests_for(self, path: str) -> list:
        return [request for request in self.requests if request.path == path]


def _handler_for(server: FileServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_GET(self):
            url = urlsplit(self.path)
            query = {key: values[0] for key, values in parse_qs(url.query).items()}
            server.requests.append(Request(url.path, query, dict(self.headers)))
            served = server.files.get(url.path)
            if served is None or served.mode == "404":
                self._reply(404, b"not found", "text/plain")
            elif served.mode == "quota_page":
                page = b"<html><body>Too many users have viewed or downloaded this file.</body></html>"
                self._reply(200, page, "text/html")
            elif served.mode == "drive_form" and "uuid" not in query:
                self._reply(200, _drive_page(url.path, query.get("id", "")), "text/html; charset=utf-8")
            else:
                self._send_file(served)

        def _send_file(self, served: Served):
            data = served.data if served.mode != "wrong_bytes" else bytes(b ^ 0xFF for b in served.data)
            start = _range_start(self.headers.get("Range"))
            if served.mode == "ignore_range" or start is None:
                status, body, headers = 200, data, {}
            elif start >= len(data):
                self._reply(416, b"", "text/plain", {"Content-Range": f"bytes */{len(data)}"})
                return
            else:
                status, body = 206, data[start:]
                headers = {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"}
            served.transfers += 1
            if served.mode == "cut_once" and served.transfers == 1:
                self._cut(status, body, headers)
            else:
                self._reply(status, body, "application/octet-stream", headers)

        def _reply(self, status, body, content_type, headers=None):
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Accept-Ranges", "bytes")
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)

        def _cut(self, status, body, headers):
            """Announce the whole body, send half of it, then drop the connection."""
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True

    return Handler


def _range_start(header):
    if not header or not header.startswith("bytes=") or not header.endswith("-"):
        return None
    return int(header[len("bytes="):-1])


def _drive_page(path: str, file_id: str) -> bytes:
    return (
        "<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head><body>"
        "<p>This file is too large for Google to scan for viruses.</p>"
        f'<form id="download-form" action="{path}" method="get">'
        '<input type="submit" value="Download anyway">'
        f'<input type="hidden" name="id" value="{file_id}">'
        '<input type="hidden" name="export" value="download">'
        '<input type="hidden" name="confirm" value="t">'
        '<input type="hidden" name="uuid" value="5f0e-test-uuid">'
        "</form></body></html>"
    ).encode()
