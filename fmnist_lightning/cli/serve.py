"""Serve a run: ``fmnist-serve run_dir=outputs/runs/<run> [backend=torch|onnx] [port=8000]``
(``python serve.py ...`` in a clone).

Starts a LitServe server (see conf/serve.yaml and fmnist_lightning/serving/server.py) and runs
until stopped with Ctrl-C, or SIGTERM (a service manager, ``docker stop``, ``scancel``): one
signal to the main process stops its HTTP and inference worker processes too.
"""

import os
import signal
from typing import Any

import hydra
from omegaconf import DictConfig

from fmnist_lightning.cli import quote_paths, require_configs
from fmnist_lightning.errors import UserError


@hydra.main(version_base="1.3", config_path="../conf", config_name="serve")
def serve(cfg: DictConfig) -> None:
    from fmnist_lightning.serving.server import ServeOptions, build_server

    settings = {key: value for key, value in cfg.items() if key not in ("host", "port")}
    try:
        server = build_server(ServeOptions(**settings))
    except UserError as err:
        raise SystemExit(f"error: {err}") from None
    print(f"serving {cfg.run_dir} ({cfg.backend}) on http://{cfg.host}:{cfg.port}/ ; Ctrl-C stops", flush=True)
    stop_on_sigterm()
    server.run(host=cfg.host, port=cfg.port, generate_client_file=False)


def stop_on_sigterm() -> None:
    """Makes SIGTERM to this process stop the server as Ctrl-C does: LitServe shuts down its
    worker processes on ``KeyboardInterrupt``, but on a plain SIGTERM only this process would
    end, leaving them serving. Processes that LitServe forks from this one inherit the
    handler; in them, SIGTERM keeps its default meaning (LitServe stops them with it)."""
    main_pid = os.getpid()

    def stop(signum: int, frame: Any) -> None:
        if os.getpid() != main_pid:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)


def main() -> None:
    """The command line: ``fmnist-serve run_dir=... [backend=...] [port=...]``."""
    require_configs()
    quote_paths()
    serve()
