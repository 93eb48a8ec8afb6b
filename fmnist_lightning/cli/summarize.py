"""Summarize a sweep: ``fmnist-summarize sweep_dir=outputs/multirun/<sweep>``
(``python summarize.py ...`` in a clone).

Writes summary.md, summary.csv, summary_jobs.csv and summary.png into the sweep folder and
prints the Markdown (see fmnist_lightning/sweeps/summary.py and conf/summarize.yaml). Exits with 1 if
a job did not finish.
"""

import hydra
from omegaconf import DictConfig

from fmnist_lightning.cli import quote_paths, require_configs
from fmnist_lightning.errors import UserError
from fmnist_lightning.sweeps import summarize


@hydra.main(version_base="1.3", config_path="../conf", config_name="summarize")
def summarize_sweep(cfg: DictConfig) -> None:
    try:
        markdown, jobs = summarize(cfg.sweep_dir, cfg.metric)
    except (FileNotFoundError, UserError) as err:  # no jobs, or a job's files damaged
        raise SystemExit(f"error: {err}") from None
    print(markdown)
    if any(not j.ended for j in jobs):
        raise SystemExit(1)


def main() -> None:
    """The command line: ``fmnist-summarize sweep_dir=... [metric=...]``."""
    require_configs()
    quote_paths()
    summarize_sweep()
