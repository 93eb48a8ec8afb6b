"""``fmnist-train resume=<run folder>`` and ``resume=<sweep folder>``, and sweep jobs continued.
The checkpoint a run then starts from is ``training.starting``'s.

``resume=<run folder> [overrides]`` continues the run with its own config: ``resumed_config``
checks the command, takes the run's lock, and reads the run's config once, through
``RunFolder.load_config`` (the old-config upgrade and the rule of trust). That config becomes
the primary config Hydra composes the command from (registered in Hydra's ``ConfigStore``),
so conf/ edits made since do not leak in, and Hydra applies the command's dotted overrides
(``trainer.max_epochs=20``) to it as to any config. This attempt's Hydra files go to
``.hydra/resume_<date>_<time>/``, leaving the original ones untouched. Nothing rewrites the
command line: a DDP child or a SLURM task runs the same command and reads the same config.

``resume=<sweep folder>`` repeats the sweep's own command into its folder
(``continue_sweep``); the sweepers then continue it (``fmnist_lightning.sweeps.continuing``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from omegaconf import DictConfig, open_dict

from fmnist_lightning.errors import RunError
from fmnist_lightning.overrides import key_of, quoted, value_of
from fmnist_lightning.run_folder import CONFIG_FILE, HYDRA_DIR, LAST_CHECKPOINT, RunFolder, read_sweep_overrides
from fmnist_lightning.training.precision import AUTO
from fmnist_lightning.training.processes import in_multirun, is_child_rank, train_command
from fmnist_lightning.trust import TARGET, TRUST_KEY, UntrustedConfigError, check_overrides

log = logging.getLogger(__name__)

#: The config groups of conf/train.yaml's defaults list.
CONFIG_GROUPS = ("data", "model", "optimizer", "scheduler", "trainer", "callbacks", "logger", "experiment", "debug")
#: The name of a resumed run's config as Hydra's primary config (in Hydra's ``ConfigStore``).
RESUMED = "resumed_run"
#: The flags of Hydra's command line that choose the config or the mode, not a value.
CONFIG_FLAGS = ("-cp", "-cn", "-cd", "--config-path", "--config-name", "--config-dir")


def trusted_on_command(args: list[str]) -> list[str]:
    """The modules this command trusts: its ``trusted_modules=[...]`` override (one name is
    taken as a list of one).

    Raises:
        RunError: A name is not a dotted Python module name.
    """
    value = value_of(args, TRUST_KEY) or []
    names = [str(v) for v in (value if isinstance(value, list) else [value])]
    bad = [n for n in names if not TARGET.fullmatch(n)]
    if bad:
        raise RunError(
            f"trusted_modules={value}: {bad[0]!r} is not a module name; give e.g. trusted_modules=[my_module]"
        )
    return names


def sweep_to_resume(args: list[str]) -> Path | None:
    """The sweep folder of ``resume=<sweep folder>`` in ``args``, or ``None``."""
    resume = value_of(args, "resume")
    folder = Path(str(resume)).expanduser() if resume is not None else None
    return folder if folder is not None and RunFolder.is_sweep(folder) else None


def resumed_config(args: list[str]) -> DictConfig | None:
    """The primary config of ``fmnist-train [args]``: ``None`` for a new run (conf/train.yaml);
    for ``resume=<run folder>``, the run's own config, read once through ``RunFolder`` with
    this command's ``trusted_modules`` (never the saved config's), with the Hydra settings of a
    resume: conf/hydra/default.yaml, the run folder as ``hydra.run.dir``, and this attempt's
    Hydra files in ``.hydra/resume_<date>_<time>/``. This process then holds the run's lock
    until it ends (rank 0 of a multi-process job holds it for all).

    Raises:
        RunError: ``resume`` names no run folder, or is combined with ``-m``, ``-cp``/``-cn``,
            ``hydra.run.dir`` or a config group; another process is training in the folder;
            or the run's config, ``metrics.json`` or ``history.csv`` is damaged;
            ``UntrustedConfigError``, its config names something not trusted.
    """
    resume = value_of(args, "resume")
    if resume is None:
        return None
    resume = str(resume)
    if not is_child_rank():  # a DDP child's command adds hydra.run.dir (Lightning's launcher)
        _check_command(resume, args)
    folder = _run_folder(resume)
    trusted = trusted_on_command(args)
    if not is_child_rank():
        folder.lock()  # held until this process ends: one writer, refused before Hydra writes
    try:  # the files a resume reads back, before anything is written
        config = folder.load_config(trusted)  # nothing it names is imported before it is trusted
        if folder.has_hydra_configs():
            raise UntrustedConfigError(
                f"the run folder {folder.path}: its {HYDRA_DIR}/ holds a hydra/ folder, which no run writes "
                "(docs/runs.md, Sharing runs safely)"
            )
        folder.read_status()
        folder.read_history()
    except RunError:
        folder.release()  # (a no-op where the lock is not held)
        raise
    with open_dict(config):
        config.resume = str(folder.path)
        config[TRUST_KEY] = trusted
        config.hydra = {"run": {"dir": str(folder.path)}, "output_subdir": RunFolder.new_attempt()}
        config.defaults = [{"hydra": "default"}, "_self_"]
    return config


def _check_command(resume: str, args: list[str]) -> None:
    """Refuses what ``resume=<run folder>`` cannot be combined with.

    Raises:
        RunError: ``-m``, ``-cp``/``-cn``, ``hydra.run.dir`` or a config group.
    """
    if "-m" in args or "--multirun" in args:
        raise RunError(
            "resume=<run folder> continues one run and cannot be combined with -m/--multirun; "
            f"continue a whole sweep with {train_command()} resume=<sweep folder>, one of its jobs with "
            f"{train_command()} resume=<sweep>/<job>"
        )
    clashing = [a for a in args if a.split("=")[0] in CONFIG_FLAGS or key_of(a) == "hydra.run.dir"]
    if clashing:
        raise RunError(f"resume={resume} sets the config and the run folder itself; drop {' '.join(clashing)}")
    groups = [a for a in args if "=" in a and key_of(a) in CONFIG_GROUPS]
    if groups:
        raise RunError(
            f"resume={resume} continues the run with its saved config, so config groups cannot be "
            f"swapped ({' '.join(groups)}); only dotted overrides such as trainer.max_epochs=20 apply"
        )


def _run_folder(resume: str) -> RunFolder:
    """The run folder ``resume`` names, resolved.

    Raises:
        RunError: No such folder, or not a run folder.
    """
    folder = Path(resume).expanduser()
    if not folder.is_dir():
        raise RunError(f"resume={resume}: no such folder. Pass a run folder such as outputs/runs/<date>_<time>.")
    if not RunFolder(folder).is_run():
        raise RunError(
            f"resume={resume} is not a run folder: it has no {CONFIG_FILE}. "
            "Pass a folder under outputs/runs/ or outputs/multirun/<sweep>/<job>/."
        )
    return RunFolder(folder.resolve())


def continue_sweep(args: list[str], folder: Path) -> list[str]:
    """The arguments of ``fmnist-train resume=<sweep folder> [overrides]``: the sweep's own
    command (its overrides from ``multirun.yaml``), into its folder, with ``-m``. The
    sweepers then continue it (``fmnist_lightning.sweeps.continuing``). Further overrides
    apply after the sweep's own: ``hydra.launcher.n_jobs=4``, say; one that changes a job is
    refused by the sweeper.

    The overrides read from ``multirun.yaml`` may come from someone else: they are checked
    (``fmnist_lightning.trust.check_overrides``) with this command's ``trusted_modules``, and
    a ``trusted_modules`` among them is dropped.

    Raises:
        RunError: ``multirun.yaml`` is damaged, or ``hydra.sweep.dir`` is given too;
            ``UntrustedConfigError``, an override of the sweep names something not trusted.
    """
    trusted = trusted_on_command(args)
    args = [a for a in args if a not in ("-m", "--multirun") and key_of(a) not in ("resume", TRUST_KEY)]
    if any(key_of(a) == "hydra.sweep.dir" for a in args):
        raise RunError(f"resume={folder} continues the sweep in its own folder; drop hydra.sweep.dir")
    overrides = read_sweep_overrides(folder)
    given = {key_of(a) for a in args}  # this command's own settings replace the sweep's
    dropped = ("hydra.sweep.dir", "hydra.mode", *given)
    own = [o for o in overrides.get("hydra", []) if key_of(o) not in dropped]
    task = [o for o in overrides.get("task", []) if key_of(o) != TRUST_KEY]
    check_overrides([*own, *task], trusted, f"the sweep folder {folder}")
    sweep_dir = f"hydra.sweep.dir={quoted(str(folder.resolve()))}"
    trust = [f"++{TRUST_KEY}=[{','.join(trusted)}]"] if trusted else []  # also where the saved config has none
    return ["-m", *own, *task, *args, *trust, sweep_dir]


def continue_job(cfg: DictConfig) -> bool:
    """Makes a sweep job continue the run an earlier attempt of it left in its folder.

    Applies to a job of a multirun whose folder holds a run with a ``last.ckpt`` and
    ``status: interrupted`` (stopped by a signal: a SLURM job that requeued itself) or
    ``running`` (the attempt died without a word: a killed sweep, a failed node): sets
    ``cfg.resume`` to the folder, as ``resume=<job folder>`` would, so the run continues from
    its last end-of-epoch checkpoint, and ``trainer.precision=auto`` to the precision the run
    chose (written into its saved config), so the continued run computes as the first did.
    A job folder holds a run only when an earlier attempt of the same job wrote it: SLURM
    starting a requeued job again, or a sweep continued in its folder
    (``fmnist_lightning.sweeps.continuing``).

    Args:
        cfg: The job's composed config; changed in place.

    Returns:
        Whether the job continues an earlier attempt.
    """
    if not in_multirun() or cfg.get("resume") or not RunFolder(cfg.output_dir).left_unfinished(cfg):
        return False
    output_dir = Path(cfg.output_dir).resolve()
    with open_dict(cfg):
        cfg.resume = str(output_dir)
        if cfg.trainer.get("precision") == AUTO and RunFolder(output_dir).is_run():  # the precision auto chose then
            saved = RunFolder(output_dir).load_config(cfg.get(TRUST_KEY) or ())
            cfg.trainer.precision = saved.trainer.precision
    restart = os.environ.get("SLURM_RESTART_COUNT")
    log.info(
        "Continuing the interrupted job in %s from its %s%s",
        output_dir,
        LAST_CHECKPOINT,
        f" (SLURM restart {restart})" if restart else "",
    )
    return True
