"""Starting ``fmnist-serve`` as a process of its own and waiting until it answers: for
notebooks, tests and ``benchmarks/speed/serve_load.py``.

>>> with start_server("outputs/runs/<run>", backend="onnx") as server:  # doctest: +SKIP
...     httpx.post(server.url + "/predict", files={"file": open("shirt.png", "rb")}).json()
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fmnist_lightning.errors import RunError


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS's choice)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ServerProcess:
    """A running ``fmnist-serve``; a context manager that stops it on exit.

    Attributes:
        process: The server's main process (LitServe's workers are its children).
        url: ``http://127.0.0.1:<port>``, without a trailing slash.
    """

    process: subprocess.Popen
    url: str
    log: Path

    def stop(self, timeout: float = 20) -> None:
        """Stops the server and its workers (SIGINT to its process group, as Ctrl-C would; SIGKILL
        after ``timeout`` seconds)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_server(run_dir: str | Path, port: int | None = None, timeout: float = 120, **options: Any) -> ServerProcess:
    """Starts ``fmnist-serve run_dir=<run_dir> port=<port> <key>=<value> ...`` in a new process
    group and waits until ``GET /health`` answers ``ok``.

    Args:
        port: A free port, or ``None`` to pick one.
        timeout: Seconds to wait for the server to become healthy.
        options: Other keys of conf/serve.yaml, e.g. ``backend="onnx"``, ``max_batch_size=1``.

    Raises:
        RunError: The server exited or did not become healthy in time (with the end of its output).
    """
    port = port or free_port()
    overrides = [f"run_dir={run_dir}", f"port={port}", *(f"{k}={v}" for k, v in options.items())]
    log = Path(tempfile.mkstemp(prefix="fmnist-serve-", suffix=".log")[1])
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-c", "from fmnist_lightning.cli.serve import main; main()", *overrides],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = ServerProcess(process=process, url=f"http://127.0.0.1:{port}", log=log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RunError(f"fmnist-serve exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(server.url + "/health", timeout=2) as answer:
                if answer.read() == b"ok":
                    return server
        except OSError:  # not listening yet, or 503 while the model loads
            pass
        time.sleep(0.25)
    server.stop()
    raise RunError(f"fmnist-serve did not become healthy in {timeout:g} s:\n{log.read_text()[-3000:]}")
