"""Train a FashionMNIST CNN: ``fmnist-train model=three_conv trainer.max_epochs=10``; ``-m``
runs a sweep, ``resume=outputs/runs/<run>`` continues a run. A single run stops with
``error: ...`` (exit status 1) on a problem it can name; in a sweep, a failing job is recorded
in its ``metrics.json``, the sweep goes on, and its summary lists the failures (exit status 1).
"""

import atexit
import gc
import logging
import math
import sys
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from fmnist_lightning.cli import find_sweepers, hydra_argv, require_configs
from fmnist_lightning.errors import FolderInUseError, RunError, RunInterrupted, TrialPruned, UserError
from fmnist_lightning.run_folder import RunFolder, register_resolvers
from fmnist_lightning.training.processes import in_multirun
from fmnist_lightning.training.resume import RESUMED, continue_job, continue_sweep, resumed_config, sweep_to_resume
from fmnist_lightning.training.slurm import in_submitit_job, requeue

log = logging.getLogger("train")


def train_run(cfg: DictConfig) -> float:
    """The task Hydra runs for each run and sweep job: returns ``optimized_metric``, or for a
    failed or pruned sweep job the worst value (-inf, or +inf for a loss)."""
    from fmnist_lightning.training.pipeline import train  # Lightning: after Hydra's own checks

    continue_job(cfg)  # a sweep job started again: SLURM requeued it, or its sweep is continued
    try:
        metrics = train(cfg)
    except RunInterrupted as err:
        if in_submitit_job():  # a sweep job on SLURM, alone in its process
            if requeue():  # no result yet: the sweep waits for the job's next start
                raise SystemExit(f"requeued: {err}") from None
            log.error("stopped: %s", err)
            return worst_value(cfg)
        raise SystemExit(f"stopped: {err}") from None  # stops a whole sweep too
    except TrialPruned as err:  # a result of the search, recorded in metrics.json
        log.info("Trial pruned: %s", err)
        return worst_value(cfg)
    except UserError as err:
        # Expected, user-fixable problems: the message says what and how, no traceback.
        return failed(cfg, f"error: {err}", record=not isinstance(err, FolderInUseError))
    except Exception as err:
        if not in_multirun():
            raise
        log.exception("The job failed")  # the traceback goes to the job's train.log
        return failed(cfg, f"error: {type(err).__name__}: {err}")
    return metrics.get(cfg.get("optimized_metric") or "val/acc_best", math.nan)


def failed(cfg: DictConfig, message: str, record: bool = True) -> float:
    """Ends a single run with ``message``; in a sweep, logs it, records it in the job's
    ``metrics.json`` if ``record``, and returns the worst value."""
    if not in_multirun():
        raise SystemExit(message)
    log.error(message)
    if record:
        try:
            RunFolder(Path(cfg.output_dir)).record_failure(message.removeprefix("error: "))
        except OSError as err:  # a full disk: the job's earlier metrics.json stays as it was
            log.error("could not record the failure in %s: %s", cfg.output_dir, err.strerror or err)
    return worst_value(cfg)


def worst_value(cfg: DictConfig) -> float:
    """The worst value of ``optimized_metric``: +inf for a loss, else -inf."""
    return math.inf if str(cfg.get("optimized_metric", "")).endswith("loss") else -math.inf


def main() -> None:
    """The command line: ``fmnist-train [overrides]``."""
    require_configs()
    find_sweepers()
    # A log line that cannot be written (a full disk) is dropped, not printed with a traceback.
    logging.raiseExceptions = False
    # At exit, the garbage collections of Python's teardown skip frozen objects (benchmarks/RESULTS.md,
    # "The speedrun"); only cycles stay uncollected, which Python does not promise at exit anyway.
    atexit.register(gc.freeze)
    register_resolvers()
    hydra_argv(_sweep_command)  # the one adjustment of the command line (cli.hydra_argv)
    try:
        resumed = resumed_config(sys.argv[1:])  # resume=<run folder>: that run's own config
    except RunError as err:
        raise SystemExit(f"error: {err}") from None
    name = "train"  # conf/train.yaml; a new run's folder is claimed by hydra_hooks.RunFolderGuard
    if resumed is not None:
        ConfigStore.instance().store(name=RESUMED, node=resumed)
        name = RESUMED
    hydra.main(version_base="1.3", config_path="pkg://fmnist_lightning.conf", config_name=name)(train_run)()


def _sweep_command(args: list[str]) -> list[str]:
    """``args``, or for ``resume=<sweep folder>`` the sweep's own command (``continue_sweep``)."""
    folder = sweep_to_resume(args)
    return continue_sweep(args, folder) if folder is not None else args


if __name__ == "__main__":  # python -m fmnist_lightning.cli.train
    main()
