"""What the agent's integrity checks and its pinned TLS cost: SHA-256 by OpenSSL (``hashlib``, which the
FPBL now ships) against the interpreter's built-in one (what an FPBL without OpenSSL falls back to), and
one agent call over plain HTTP against one over TLS to a pinned certificate, side by side in one run.

    .venv/bin/python bench/agent_crypto.py [--mib 256] [--calls 50] [--json]

Medians of 5 hashing runs and of ``--calls`` calls (each call is a new connection, as the agent makes
them: TLS pays a full handshake every time).
"""

from __future__ import annotations

import _sha256  # type: ignore[import-not-found]
import argparse
import hashlib
import http.server
import json
import os
import ssl
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rhaas.agent.api import Api  # noqa: E402
from rhaas.agent.settings import parse_cmdline  # noqa: E402
from rhaas.provisioning import agenttls  # noqa: E402


def hash_rate(new: object, data: bytes) -> float:
    """MB/s of the median of 5 runs."""
    runs = []
    for _ in range(5):
        start = time.perf_counter()
        h = new()  # type: ignore[operator]
        h.update(data)
        h.hexdigest()
        runs.append(time.perf_counter() - start)
    return len(data) / statistics.median(runs) / 1e6


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        body = b'{"action": "wait", "poll_after": 1}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def call_latency(key: Path | None, calls: int) -> float:
    """Median milliseconds of one agent call (``GET work``) on a new connection."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    words = f"rhaas.agent=http://127.0.0.1:{server.server_address[1]}"
    if key is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        words = f"rhaas.agent=https://127.0.0.1:{server.server_address[1]} rhaas.pin={agenttls.pin_of(key)}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    api = Api(parse_cmdline(f"{words} rhaas.node=n1 rhaas.secret=s"))
    try:
        api.call("GET", "work")  # warm: imports, the first handshake's context
        runs = []
        for _ in range(calls):
            start = time.perf_counter()
            api.call("GET", "work")
            runs.append(time.perf_counter() - start)
        return statistics.median(runs) * 1000
    finally:
        server.shutdown()
        server.server_close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    data = os.urandom(args.mib << 20)
    openssl, builtin = hash_rate(hashlib.sha256, data), hash_rate(_sha256.sha256, data)
    with tempfile.TemporaryDirectory(prefix="rhaas-bench-") as tmp:
        key = Path(tmp) / "key.pem"
        agenttls.ensure_key(key)
        plain, tls = call_latency(None, args.calls), call_latency(key, args.calls)
    figures = {
        "sha256_openssl_mb_s": round(openssl), "sha256_builtin_mb_s": round(builtin),
        "sha256_ratio": round(openssl / builtin, 2), "call_http_ms": round(plain, 2),
        "call_tls_pinned_ms": round(tls, 2), "tls_extra_ms": round(tls - plain, 2),
    }  # fmt: skip
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    print(f"SHA-256 over {args.mib} MiB: OpenSSL {openssl:.0f} MB/s, built-in {builtin:.0f} MB/s "
          f"(OpenSSL {openssl / builtin:.2f}x)")  # fmt: skip
    print(f"one agent call, new connection: plain HTTP {plain:.2f} ms, TLS pinned {tls:.2f} ms "
          f"(+{tls - plain:.2f} ms)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
