"""The Hydra callback of every multirun (``conf/hydra/default.yaml``): the summary at its end."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from fmnist_lightning.errors import RunError, UserError
from fmnist_lightning.sweeps.summary import summarize

log = logging.getLogger(__name__)


class SweepSummary(Callback):
    """Hydra callback (``conf/hydra/default.yaml``, through ``cli.hydra_hooks``): when a
    multirun ends, writes and prints its summary.

    Raises:
        RunError: From ``on_multirun_end``: a job did not finish (the command then exits with
            status 1), or a job's files are damaged.

    Args:
        metric: The metric configurations are ranked by; ``None`` uses the config's
            ``optimized_metric``.
    """

    def __init__(self, metric: str | None = None) -> None:
        self.metric = metric

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            markdown, jobs = summarize(sweep_dir, self.metric or config.get("optimized_metric") or "val/acc_best")
        except FileNotFoundError as err:
            log.warning("No sweep summary: %s", err)
            return
        except UserError as err:  # a job's files are damaged
            raise RunError(f"no sweep summary: {err}") from None
        print(
            f"\n{markdown}\nSummary files: {sweep_dir}/summary.md, summary.csv, summary_jobs.csv, summary.png",
            flush=True,
        )
        unfinished = [j for j in jobs if not j.ended]
        if unfinished:
            raise RunError(
                f"{len(unfinished)} of {len(jobs)} jobs did not finish "
                f"(jobs {', '.join(j.folder.name for j in unfinished)}); see {sweep_dir / 'summary.md'}"
            )
