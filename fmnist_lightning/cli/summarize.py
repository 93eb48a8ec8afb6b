"""Summarize a sweep: ``fmnist-summarize [sweep_dir=]outputs/multirun/<sweep>`` writes the summary
files (``sweeps.summary``) and prints the Markdown; exits with 1 if a job did not finish."""

import re
import shlex
from pathlib import Path

import hydra
from omegaconf import DictConfig

from fmnist_lightning.cli import hydra_argv, require_configs
from fmnist_lightning.errors import UserError
from fmnist_lightning.overrides import key_of, quoted
from fmnist_lightning.sweeps import summarize

#: Hydra's flags that take the next word as their value (``hydra --help``); ``--info`` takes
#: it only when it is one of ``INFO_CHOICES``.
VALUE_FLAGS = ("--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd")
VALUE_FLAGS += ("--experimental-rerun",)
INFO_CHOICES = ("all", "config", "defaults", "defaults-tree", "plugins", "searchpath")
#: The keys of conf/summarize.yaml: a word that sets one is an override, even if a folder has its name.
KEYS = ("sweep_dir", "metric", "hydra")


def _is_folder_word(arg: str) -> bool:
    """Whether ``arg`` is no Hydra override: no ``=`` nor ``~``, or a folder not setting one of ``KEYS``."""
    if "=" not in arg:
        return not arg.startswith("~") or Path(arg).is_dir()
    return Path(arg).is_dir() and re.split(r"[./@]", key_of(arg))[0] not in KEYS


def folder_words(args: list[str]) -> list[int]:
    """The positions in ``args`` (the command's arguments) of the words that are neither a
    Hydra override nor a Hydra flag or a flag's value (``VALUE_FLAGS``, ``--info``)."""
    found, skip = [], False
    for i, arg in enumerate(args):
        if skip:
            skip = False
        elif arg.startswith("-"):
            following = args[i + 1] if i + 1 < len(args) else None
            skip = arg in VALUE_FLAGS or (arg in ("--info", "-i") and following in INFO_CHOICES)
        elif _is_folder_word(arg):
            found.append(i)
    return found


def folder_as_override(args: list[str]) -> list[str]:
    """``args`` with the one sweep folder given alone as ``sweep_dir='<folder>'``, quoted so that
    Hydra reads any folder name back unchanged.

    Raises:
        UserError: More than one such word, or one beside a ``sweep_dir=`` override.
    """
    words = folder_words(args)
    if not words:
        return args
    given = [a for a in args if "=" in a and key_of(a) == "sweep_dir"]
    if len(words) > 1 or given:
        got = ", ".join(repr(a) for a in [*(args[i] for i in words), *given])
        raise UserError(
            f"summarize takes one sweep folder, as sweep_dir=<folder> (got {got}); "
            f"run: fmnist-summarize sweep_dir={shlex.quote(args[words[0]])}"
        )
    return [f"sweep_dir={quoted(a)}" if i == words[0] else a for i, a in enumerate(args)]


@hydra.main(version_base="1.3", config_path="pkg://fmnist_lightning.conf", config_name="summarize")
def summarize_sweep(cfg: DictConfig) -> None:
    try:
        markdown, jobs = summarize(cfg.sweep_dir, cfg.metric)
    except (FileNotFoundError, UserError) as err:  # no jobs, or a job's files damaged
        raise SystemExit(f"error: {err}") from None
    print(markdown)
    if any(not j.ended for j in jobs):
        raise SystemExit(1)


def main() -> None:
    """The command line: ``fmnist-summarize [sweep_dir=]... [metric=...]``."""
    require_configs()
    hydra_argv(folder_as_override)
    summarize_sweep()


if __name__ == "__main__":  # python -m fmnist_lightning.cli.summarize
    main()
