"""``python train.py resume=<run folder>``: the command line rewritten, and sweep jobs
continued. The checkpoint the run then starts from is ``training.starting``'s.

``python train.py resume=<run folder> [overrides]`` is rewritten by ``preflight`` into
``-cp <run folder>/.hydra -cn config ++resume=<run folder> hydra.run.dir=<run folder> ...``:
the run's saved, fully composed config is the primary config (so conf/ edits made since do
not leak in), dotted overrides such as ``trainer.max_epochs=20`` still apply, and this
attempt's Hydra files go to ``.hydra/resume_<date>_<time>/``, leaving the original ones
untouched. An explicit ``hydra.run.dir`` (or ``hydra.sweep.dir``) that already holds a run
is refused (by ``guard.RunFolderGuard``), since Hydra would overwrite that run's files.
Folder names with spaces or non-ASCII letters work in any spelling: ``resume=/tmp/my run``
as one shell word, or Hydra's quoting ``'resume="/tmp/my run/ñ"'``.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, open_dict

from fmnist_lightning.errors import RunError
from fmnist_lightning.run_folder import CONFIG_FILE, HYDRA_DIR, RunFolder, is_sweep_folder, read_sweep_overrides
from fmnist_lightning.training.precision import AUTO
from fmnist_lightning.training.processes import in_multirun, is_child_rank, train_command
from fmnist_lightning.training.run_dirs import override_value, quoted, split_override
from fmnist_lightning.trust import TARGET, TRUST_KEY, UntrustedConfigError, check_overrides

log = logging.getLogger(__name__)

#: The config groups of conf/train.yaml's defaults list.
CONFIG_GROUPS = ("data", "model", "optimizer", "scheduler", "trainer", "callbacks", "logger", "experiment", "debug")


def _value(args: list[str], key: str) -> Any:
    """The value of the last ``key=value`` override in ``args`` as Hydra reads it (quotes
    removed, ``null`` as ``None``; ``+``/``++`` prefixes allowed; ``~key`` deletions are not
    values), or ``None``."""
    found = None
    for arg in args:
        name, value = split_override(arg)
        if value is not None and name == key and not arg.startswith("~"):
            found = override_value(arg)
    return found


def trusted_on_command(args: list[str]) -> list[str]:
    """The modules this command trusts: its ``trusted_modules=[...]`` override (one name is
    taken as a list of one).

    Raises:
        RunError: A name is not a dotted Python module name.
    """
    value = _value(args, TRUST_KEY) or []
    names = [str(v) for v in (value if isinstance(value, list) else [value])]
    bad = [n for n in names if not TARGET.fullmatch(n)]
    if bad:
        raise RunError(
            f"trusted_modules={value}: {bad[0]!r} is not a module name; give e.g. trusted_modules=[my_module]"
        )
    return names


def trusted_override(trusted: list[str]) -> str:
    """The override that sets ``trusted_modules`` to ``trusted``, replacing whatever a saved
    config holds (``++``: also in a config that has no such key)."""
    return f"++{TRUST_KEY}=[{','.join(trusted)}]"


def preflight(argv: list[str]) -> list[str]:  # noqa: C901 (removed by issue 42, step 2)
    """Checks the command line of ``train.py`` before Hydra runs, and rewrites ``resume=``.

    A new run's folder is checked later, on the folder Hydra resolves, by
    ``guard.RunFolderGuard``.

    Args:
        argv: ``sys.argv``.

    Returns:
        The command line Hydra should parse: ``argv`` itself; for ``resume=<run folder>``
        the rewritten one described in the module docstring; for ``resume=<sweep folder>``
        the sweep's own command (``continue_sweep``).

    Raises:
        RunError: ``resume`` names no run folder or is combined with ``-m``/``-cp``/``-cn``,
            ``hydra.run.dir`` or a config group; another process is training in the folder;
            or the run's config, ``metrics.json`` or ``history.csv`` is damaged.
    """
    args = argv[1:]
    if any(a.startswith("++resume=") for a in args):  # already rewritten: a DDP child's copy
        return argv
    multirun = "-m" in args or "--multirun" in args
    resume = _value(args, "resume")
    if resume is None:
        return _without_hydra_files(argv)  # DDP children and SLURM tasks share rank 0's run folder
    resume = str(resume)

    if is_sweep_folder(Path(resume).expanduser()):
        return continue_sweep(argv, Path(resume).expanduser())
    if multirun:
        raise RunError(
            "resume=<run folder> continues one run and cannot be combined with -m/--multirun; "
            f"continue a whole sweep with {train_command()} resume=<sweep folder>, one of its jobs with "
            f"{train_command()} resume=<sweep>/<job>"
        )
    clashing = [a for a in args if a.split("=")[0] in ("-cp", "-cn", "--config-path", "--config-name", "hydra.run.dir")]
    if clashing:
        raise RunError(f"resume={resume} sets the config and the run folder itself; drop {' '.join(clashing)}")
    groups = [a for a in args if "=" in a and split_override(a)[0] in CONFIG_GROUPS]
    if groups:
        raise RunError(
            f"resume={resume} continues the run with its saved config, so config groups cannot be "
            f"swapped ({' '.join(groups)}); only dotted overrides such as trainer.max_epochs=20 apply"
        )
    folder = Path(resume).expanduser()
    if not folder.is_dir():
        raise RunError(f"resume={resume}: no such folder. Pass a run folder such as outputs/runs/<date>_<time>.")
    if not RunFolder(folder).is_run():
        raise RunError(
            f"resume={resume} is not a run folder: it has no {CONFIG_FILE}. "
            "Pass a folder under outputs/runs/ or outputs/multirun/<sweep>/<job>/."
        )
    folder = folder.resolve()
    trusted = trusted_on_command(args)
    if not is_child_rank():  # rank 0 holds the lock for the other tasks of a SLURM job
        RunFolder(folder).lock()  # held until this process ends: one writer, refused before Hydra writes
    try:  # the files a resume reads back, before Hydra reads the config or writes anything
        RunFolder(folder).load_config(trusted)  # nothing it names is imported before it is trusted
        if RunFolder(folder).has_hydra_configs():  # -cp <run>/.hydra: a config search path of Hydra's own
            raise UntrustedConfigError(
                f"the run folder {folder}: its {HYDRA_DIR}/ holds a hydra/ folder, which no run writes and where Hydra "
                "would look for its own configs (docs/runs.md, Sharing runs safely)"
            )
        RunFolder(folder).read_status()
        RunFolder(folder).read_history()
    except RunError:
        RunFolder(folder).release()  # (a no-op where the lock is not held)
        raise
    attempt = RunFolder.new_attempt()
    others = [a for a in args if split_override(a)[0] not in ("resume", TRUST_KEY)]
    return _without_hydra_files(
        [
            argv[0],
            "-cp",
            str(folder / HYDRA_DIR),
            "-cn",
            "config",
            *others,
            trusted_override(trusted),  # this command's trust, never the saved config's
            f"++resume={quoted(str(folder))}",
            f"hydra.run.dir={quoted(str(folder))}",
            f"hydra.output_subdir={attempt}",
        ]
    )


def continue_sweep(argv: list[str], folder: Path) -> list[str]:
    """The command line of ``train.py resume=<sweep folder> [overrides]``: the sweep's own
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
    trusted = trusted_on_command(argv[1:])
    args = [a for a in argv[1:] if a not in ("-m", "--multirun") and split_override(a)[0] not in ("resume", TRUST_KEY)]
    if any(split_override(a)[0] == "hydra.sweep.dir" for a in args):
        raise RunError(f"resume={folder} continues the sweep in its own folder; drop hydra.sweep.dir")
    overrides = read_sweep_overrides(folder)
    given = {split_override(a)[0] for a in args}  # this command's own settings replace the sweep's
    dropped = ("hydra.sweep.dir", "hydra.mode", *given)
    own = [o for o in overrides.get("hydra", []) if split_override(o)[0] not in dropped]
    task = [o for o in overrides.get("task", []) if split_override(o)[0] != TRUST_KEY]
    check_overrides([*own, *task], trusted, f"the sweep folder {folder}")
    sweep_dir = f"hydra.sweep.dir={quoted(str(folder.resolve()))}"
    trust = [trusted_override(trusted)] if trusted else []
    return [argv[0], "-m", *own, *task, *args, *trust, sweep_dir]


def _without_hydra_files(argv: list[str]) -> list[str]:
    """``argv`` for a task of a multi-process SLURM job other than rank 0: Hydra writes no
    ``.hydra/`` files (``hydra.output_subdir=null``), since rank 0 writes them. Unchanged in
    rank 0. (Lightning's own DDP children pass ``hydra.output_subdir=null`` themselves.)"""
    if not is_child_rank():
        return argv
    return [a for a in argv if not a.startswith("hydra.output_subdir=")] + ["hydra.output_subdir=null"]


def run_command_line() -> None:
    """Applies ``preflight`` to ``sys.argv``; exits with the message on a refusal."""
    try:
        sys.argv = preflight(sys.argv)
    except RunError as err:
        raise SystemExit(f"error: {err}") from None


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
        "Continuing the interrupted job in %s from its last.ckpt%s",
        output_dir,
        f" (SLURM restart {restart})" if restart else "",
    )
    return True
