"""Serve a run: ``fmnist-serve run_dir=outputs/runs/<run> [backend=torch|onnx] [port=8000]``, until
Ctrl-C or SIGTERM to the main process, which stops its worker processes too."""

import hydra
from omegaconf import DictConfig

from fmnist_lightning.cli import hydra_argv, require_configs
from fmnist_lightning.errors import UserError
from fmnist_lightning.training.processes import sigterm_as_ctrl_c


@hydra.main(version_base="1.3", config_path="pkg://fmnist_lightning.conf", config_name="serve")
def serve(cfg: DictConfig) -> None:
    from fmnist_lightning.serving.server import ServeOptions, build_server

    settings = {key: value for key, value in cfg.items() if key not in ("host", "port")}
    try:
        server = build_server(ServeOptions(**settings))
    except UserError as err:
        raise SystemExit(f"error: {err}") from None
    print(f"serving {cfg.run_dir} ({cfg.backend}) on http://{cfg.host}:{cfg.port}/ ; Ctrl-C stops", flush=True)
    with sigterm_as_ctrl_c():  # LitServe stops its worker processes on Ctrl-C only
        server.run(host=cfg.host, port=cfg.port, generate_client_file=False)


def main() -> None:
    """The command line: ``fmnist-serve run_dir=... [backend=...] [port=...]``."""
    require_configs()
    hydra_argv()
    serve()


if __name__ == "__main__":  # python -m fmnist_lightning.cli.serve
    main()
