"""``cosyvoice-rk webui``: start the studio from command-line options."""

from __future__ import annotations

import asyncio
import hmac
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from pipeline.shared.errors import InputError


def parse_auth(values: list[str] | None) -> list[tuple[str, str]]:
    """``["user:pass", ...]`` → pairs; a value without a colon or with an empty part is refused."""
    pairs = []
    for v in values or []:
        user, sep, password = v.partition(":")
        if not sep or not user or not password:
            raise InputError(f"--auth {v!r}: write it as USER:PASSWORD")
        pairs.append((user, password))
    return pairs


class SlowAuth:
    """Gradio's login check for ``--auth`` pairs, with failed logins slowed down: each failure for a user name
    waits longer (1, 2, 4 … up to 30 s) before it answers, so guessing passwords over the LAN is slow; a good
    login resets it. Passwords are compared in constant time."""

    def __init__(self, pairs: list[tuple[str, str]], *, base_delay: float = 1.0, max_delay: float = 30.0) -> None:
        self._pairs = [(u.encode(), p.encode()) for u, p in pairs]
        self._failures: dict[str, int] = {}
        self._lock = threading.Lock()
        self.base_delay, self.max_delay = base_delay, max_delay

    async def check(self, username: str, password: str) -> bool:
        """Gradio awaits this on its event loop: the delay is an asyncio sleep, other pages are not held up."""
        ok, delay = self._verdict(username, password)
        if not ok:
            await asyncio.sleep(delay)
        return ok

    def _verdict(self, username: str, password: str) -> tuple[bool, float]:
        u, p = str(username).encode(), str(password).encode()
        ok = False
        for user, pw in self._pairs:  # every pair is compared, so the time does not tell which part was wrong
            ok |= hmac.compare_digest(u, user) & hmac.compare_digest(p, pw)
        key = str(username)[:64]
        with self._lock:
            if ok:
                self._failures.pop(key, None)
                return True, 0.0
            n = self._failures[key] = min(self._failures.get(key, 0) + 1, 32)
            if len(self._failures) > 10_000:  # bounded: someone trying many names
                self._failures.clear()
        return False, min(self.max_delay, self.base_delay * 2 ** (n - 1))


def self_signed_cert(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for this machine (made once with ``openssl``), so browsers on other machines
    allow the microphone (they only do on HTTPS pages)."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    if cert.is_file() and key.is_file():
        return cert, key
    openssl = shutil.which("openssl")
    if not openssl:
        raise InputError("--https needs the `openssl` program (apt-get install openssl), or give your own "
                         "certificate with --ssl-certfile and --ssl-keyfile")
    folder.mkdir(parents=True, exist_ok=True)
    host = socket.gethostname()
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        t_cert, t_key = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
        r = subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650",
                            "-subj", f"/CN={host}", "-addext", f"subjectAltName=DNS:{host},DNS:localhost,IP:127.0.0.1",
                            "-keyout", str(t_key), "-out", str(t_cert)], capture_output=True, text=True)
        if r.returncode != 0:
            raise InputError(f"openssl could not make a certificate: {r.stderr.strip()[-300:]}")
        os.chmod(t_key, 0o600)
        os.replace(t_key, key)
        os.replace(t_cert, cert)
    return cert, key


def lan_address() -> str | None:
    """This machine's address on its default route (no packet is sent), for the "open this" hint."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: never routed, only selects the outgoing interface
            return s.getsockname()[0]
    except OSError:
        return None


def _stop_on_sigterm(*_: Any) -> None:
    raise KeyboardInterrupt  # `systemctl stop` / `kill`: shut the worker down like Ctrl+C does


def serve(a: Any) -> int:
    """Run the studio until Ctrl+C. ``a``: the parsed ``webui`` options."""
    from .app import launch
    from .client import Studio

    auth = parse_auth(a.auth)
    certfile, keyfile = a.ssl_certfile, a.ssl_keyfile
    if bool(certfile) != bool(keyfile):
        raise InputError("give both --ssl-certfile and --ssl-keyfile")
    if a.https and not certfile:
        # not under results_dir: that folder is served to the page
        config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
        certfile, keyfile = self_signed_cert(config / "cosyvoice-rk" / "tls")
    studio = Studio(a.bundle, a.speakers_dir, a.results_dir, quant=a.quant, n_threads=a.threads,
                    flow_backend=a.flow_backend, npu_cores=a.npu_cores, cpus=a.cpus, flow_fast=a.flow_fast,
                    flow_steps=a.flow_steps, history_size=a.history,
                    max_queue=a.queue_size, asr_dir=getattr(a, "asr_dir", None))
    if studio.bundle_error:
        print(f"warning: {studio.bundle_error}\nthe page starts anyway and says how to get a bundle: its Status tab "
              "downloads and converts one (Download and convert, docs/first-run.md)", file=sys.stderr)
    api_key = getattr(a, "api_key", None) or None
    if a.host not in ("127.0.0.1", "localhost", "::1") and not auth:
        print("note: the studio is open to everyone on the network; add --auth USER:PASSWORD to require a login",
              file=sys.stderr)
    if not auth and not api_key:
        print(f"note: the OpenAI-compatible API (/v1) needs no key: anyone who can reach {a.host} can use it; "
              "add --api-key KEY or --auth USER:PASSWORD to require one", file=sys.stderr)
    scheme = "https" if certfile else "http"
    host = (lan_address() or "<this machine's address>") if a.host in ("0.0.0.0", "::") else a.host
    print(f"studio: open {scheme}://{host}:{a.port}/ (OpenAI-compatible API: {scheme}://{host}:{a.port}/v1)",
          file=sys.stderr, flush=True)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        launch(studio, host=a.host, port=a.port, auth=auth, max_upload_mb=a.max_upload_mb,
               ssl_certfile=str(certfile) if certfile else None, ssl_keyfile=str(keyfile) if keyfile else None,
               block=True, api_key=api_key)
    finally:
        studio.close()
    return 0
