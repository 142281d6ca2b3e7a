"""Starting ``keel serve`` as a real process for end-to-end tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import httpx

from tests.backends import db_args


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class KeelProcess:
    """``keel serve`` on a free port; waits for /healthz; SIGTERM on exit."""

    def __init__(self, config: Path, database: Path | None, env: dict[str, str] | None = None,
                 startup_s: float = 60.0, args: tuple[str, ...] = ()) -> None:
        """``database`` None: the environment names the store (KEEL_DATABASE_URL);
        ``args``: more flags for ``keel serve`` (e.g. ``--workers 2``)."""
        self.config = config
        self.database = database
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._env = {**os.environ, **(env or {})}
        self._startup_s = startup_s
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None
        self.output = b""

    def start(self) -> KeelProcess:
        cmd = [sys.executable, "-m", "keel", "serve", "--config", str(self.config),
               *(db_args(self.database) if self.database else ()), "--port",
               str(self.port), *self.args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     env=self._env)
        deadline = time.monotonic() + self._startup_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"keel serve exited: {self.proc.stdout.read().decode()}")  # type: ignore[union-attr]
            try:
                if httpx.get(f"{self.base_url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"keel serve did not start in {self._startup_s} s: {self.output.decode()}")

    def stop(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        self.output += out or b""
        return self.proc.returncode

    def __enter__(self) -> KeelProcess:
        return self.start()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
