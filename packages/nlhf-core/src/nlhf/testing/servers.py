"""Real server processes on loopback for tests (``nlhf serve``, fault servers): a free
port, start, wait until ``/health`` (or another path) answers, stop. Every wait is
bounded."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """``argv`` run as a child process serving ``http://127.0.0.1:PORT``; :meth:`start`
    waits up to ``ready_timeout`` seconds for ``GET ready_path`` to answer 200."""

    def __init__(
        self,
        argv: list[str],
        port: int,
        *,
        env: dict[str, str] | None = None,
        ready_path: str = "/health",
        ready_timeout: float = 120.0,
        log: Path | None = None,
    ) -> None:
        self.argv, self.port, self.ready_path, self.ready_timeout = (
            argv,
            port,
            ready_path,
            ready_timeout,
        )
        self.env = {**os.environ, **(env or {})}
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"http://127.0.0.1:{port}"

    def start(self) -> ServerProcess:
        import httpx

        out = open(self.log, "wb") if self.log else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(self.argv, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"server {self.argv} exited with {self.proc.returncode}: {self.output()}"
                )
            try:
                if httpx.get(self.url + self.ready_path, timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(
            f"server {self.argv} not ready after {self.ready_timeout} s: {self.output()}"
        )

    def output(self) -> str:
        return (
            self.log.read_text(errors="replace")[-3000:] if self.log and self.log.exists() else ""
        )

    def kill(self) -> None:
        """SIGKILL: the server dies mid-conversation, as a crashed machine would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
