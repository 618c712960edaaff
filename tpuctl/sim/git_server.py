"""Private git servers on loopback, as a private GitHub repository looks to a worker.

- Over SSH: a real sshd (tpuctl.sim.sshd) that lets in only the keys given to it; git runs
  `git-upload-pack` through it, as on any git host. Its host key is what a worker must pin.
- Over HTTP: `git http-backend` (git's own smart-HTTP server, run as CGI) behind a small HTTP
  server that answers 401 to any request without the right basic-auth user and token. Every
  request line and Authorization header it saw is kept, so tests can check where a token went.
"""

from __future__ import annotations

import base64
import os
import subprocess
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tpuctl.sim.sshd import SshdWorker

GIT_HTTP_BACKEND_CANDIDATES = ("/usr/lib/git-core/git-http-backend", "/usr/libexec/git-core/git-http-backend")


@dataclass
class SshGitServer:
    """A git host reached as ssh://git@ADDRESS:PORT/PATH; only `authorized_keys` get in."""

    root: Path
    address: str
    authorized_keys: str
    sshd: SshdWorker | None = None

    def start(self) -> SshGitServer:
        self.sshd = SshdWorker(self.root, self.address, self.authorized_keys).start()
        return self

    def stop(self) -> None:
        if self.sshd is not None:
            self.sshd.stop()

    def url(self, repository: Path) -> str:
        return f"ssh://root@{self.address}:{self.sshd.port}{repository}"

    @property
    def known_hosts_line(self) -> str:
        """The line a known_hosts file (or `git_host_keys`) needs for this host: `[address]:port type key`."""
        kind, key = (self.sshd.host_key.with_suffix(".pub")).read_text().split()[:2]
        return f"[{self.address}]:{self.sshd.port} {kind} {key}"


def http_backend_path() -> str:
    for path in GIT_HTTP_BACKEND_CANDIDATES:
        if os.access(path, os.X_OK):
            return path
    exec_path = subprocess.run(["git", "--exec-path"], capture_output=True, text=True, check=True).stdout.strip()
    return str(Path(exec_path) / "git-http-backend")


@dataclass
class HttpGitServer:
    """Smart-HTTP git for every repository under `project_root`, for `user`:`token` only."""

    project_root: Path
    user: str
    token: str
    address: str = "127.0.0.1"
    requests: list[tuple[str, str]] = field(default_factory=list)  # (request line, Authorization header)
    server: ThreadingHTTPServer | None = None

    def start(self) -> HttpGitServer:
        owner = self

        class Handler(_GitCgiHandler):
            git_server = owner

        self.server = ThreadingHTTPServer((self.address, 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def url(self, repository: Path) -> str:
        return f"http://{self.address}:{self.server.server_address[1]}/{repository.relative_to(self.project_root)}"

    def authorized(self, header: str) -> bool:
        expected = base64.b64encode(f"{self.user}:{self.token}".encode()).decode()
        return header == f"Basic {expected}"


class _GitCgiHandler(BaseHTTPRequestHandler):
    git_server: HttpGitServer

    def log_message(self, format: str, *args) -> None:
        """Quiet: the test output is no place for request logs."""

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def _serve(self) -> None:
        server = self.git_server
        header = self.headers.get("Authorization", "")
        server.requests.append((self.requestline, header))
        if not server.authorized(header):
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="private git"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        path, _, query = self.path.partition("?")
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GIT_PROJECT_ROOT": str(server.project_root),
               "GIT_HTTP_EXPORT_ALL": "1", "REQUEST_METHOD": self.command, "PATH_INFO": path, "QUERY_STRING": query,
               "CONTENT_TYPE": self.headers.get("Content-Type", ""), "CONTENT_LENGTH": str(len(body)),
               "REMOTE_USER": server.user, "REMOTE_ADDR": self.client_address[0],
               "GIT_PROTOCOL": self.headers.get("Git-Protocol", "")}
        done = subprocess.run([http_backend_path()], input=body, env=env, capture_output=True, check=False)
        head, _, payload = done.stdout.partition(b"\r\n\r\n")
        status, headers = 200, []
        for line in head.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.split()[0])
            elif name:
                headers.append((name, value.strip()))
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)
