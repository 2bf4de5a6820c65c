"""A local stand-in for the HuggingFace hub's HTTP API, serving one folder as a model repository on loopback.

Point huggingface_hub at it with ``HF_ENDPOINT=<url>``; the real client code then runs unchanged. It answers what
``list_repo_files`` (``GET /api/models/{repo}/tree/{rev}?recursive=...``), ``model_info(files_metadata=True)``
(``GET /api/models/{repo}/revision/{rev}?blobs=True``) and ``hf_hub_download`` (``HEAD`` then ``GET
/{repo}/resolve/{rev}/{path}``, with ``X-Repo-Commit``, ``ETag`` and ``Content-Length``; ``Range`` honoured) use.
``delay`` slows file bodies down (seconds per 64 KiB) so that progress can be watched; ``gets`` counts the file
bodies served, per path.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

COMMIT = "0123456789abcdef0123456789abcdef01234567"
CHUNK = 1 << 16


class FakeHub:
    def __init__(self, root: Path, repo_id: str, *, delay: float = 0.0) -> None:
        self.root = Path(root)
        self.repo_id = repo_id
        self.delay = delay
        self.gets: Counter[str] = Counter()
        self.files = sorted(str(p.relative_to(self.root)) for p in self.root.rglob("*") if p.is_file())
        self._sha1 = {f: hashlib.sha1((self.root / f).read_bytes()).hexdigest() for f in self.files}
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: object) -> None:
                pass

            def do_HEAD(self) -> None:  # noqa: N802
                hub._serve(self, body=False)

            def do_GET(self) -> None:  # noqa: N802
                hub._serve(self, body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _entry(self, f: str) -> dict:
        return {"type": "file", "oid": self._sha1[f], "size": (self.root / f).stat().st_size, "path": f}

    def _serve(self, h: BaseHTTPRequestHandler, *, body: bool) -> None:
        path = unquote(urlsplit(h.path).path)
        api = f"/api/models/{self.repo_id}/"
        if path.startswith(api + "tree/"):
            return self._json(h, [self._entry(f) for f in self.files], body)
        if path.startswith(api + "revision/") or path == api.rstrip("/"):
            sib = [{"rfilename": f, "size": self._entry(f)["size"], "blobId": self._sha1[f]} for f in self.files]
            return self._json(h, {"id": self.repo_id, "sha": COMMIT, "siblings": sib}, body)
        prefix = f"/{self.repo_id}/resolve/"
        if path.startswith(prefix):
            rest = path[len(prefix):]
            _rev, _, name = rest.partition("/")
            if name in self.files:
                return self._file(h, name, body)
        h.send_response(404)
        h.send_header("X-Error-Code", "EntryNotFound")
        h.send_header("X-Error-Message", "not found")
        h.send_header("X-Repo-Commit", COMMIT)
        h.send_header("Content-Length", "0")
        h.end_headers()

    def _json(self, h: BaseHTTPRequestHandler, obj: object, body: bool) -> None:
        data = json.dumps(obj).encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if body:
            h.wfile.write(data)

    def _file(self, h: BaseHTTPRequestHandler, name: str, body: bool) -> None:
        data = (self.root / name).read_bytes()
        start = 0
        rng = h.headers.get("Range", "")
        if body and rng.startswith("bytes="):
            start = int(rng[6:].split("-")[0] or 0)
        h.send_response(206 if start else 200)
        h.send_header("X-Repo-Commit", COMMIT)
        h.send_header("ETag", f'"{self._sha1[name]}"')
        h.send_header("Content-Length", str(len(data) - start))
        h.send_header("Accept-Ranges", "bytes")
        h.end_headers()
        if not body:
            return
        self.gets[name] += 1
        try:
            for i in range(start, len(data), CHUNK):
                h.wfile.write(data[i:i + CHUNK])
                if self.delay:
                    time.sleep(self.delay)
        except (BrokenPipeError, ConnectionResetError):
            pass
