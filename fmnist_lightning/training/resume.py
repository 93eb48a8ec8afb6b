"""``fmnist-train resume=<run folder>`` and ``resume=<sweep folder>``, sweep jobs continued,
and the checkpoint a run starts from. A resumed run's own config is Hydra's primary config, so
conf/ edits made since do not leak in and dotted overrides apply to it; nothing rewrites the
command line, so a DDP child or a SLURM task reads the same config. ``resume=<sweep folder>``
repeats the sweep's own command into its folder (``fmnist_lightning.sweeps.continuing``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from fmnist_lightning.errors import RunError
from fmnist_lightning.overrides import key_of, quoted, value_of
from fmnist_lightning.run_folder import (
    CHECKPOINTS,
    CONFIG_FILE,
    HYDRA_DIR,
    LAST_CHECKPOINT,
    RunFolder,
    read_sweep_overrides,
)
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
    """The modules this command trusts: its ``trusted_modules=[...]`` override.

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
    """The primary config of ``fmnist-train [args]``: ``None`` for a new run; for
    ``resume=<run folder>``, the run's own config, trusted as this command says (never as the
    saved config says), with a resume's Hydra settings. This process then holds the run's lock
    until it ends (rank 0 holds it for all).

    Raises:
        RunError: ``resume`` names no run folder, or is combined with ``-m``, ``-cp``/``-cn``,
            ``hydra.run.dir`` or a config group; another process is training in the folder;
            or the run's config, ``metrics.json`` or ``history.csv`` is damaged.
        UntrustedConfigError: Its config names something not trusted.
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
    """Refuses ``-m``, ``-cp``/``-cn``, ``hydra.run.dir`` or a config group beside ``resume``."""
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
    """The run folder ``resume`` names, resolved; a ``RunError`` where there is none."""
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
    overrides from ``multirun.yaml`` (checked with this command's ``trusted_modules``, never
    theirs), then the further ones, into its folder, with ``-m``.

    Raises:
        RunError: ``multirun.yaml`` is damaged, or ``hydra.sweep.dir`` is given too.
        UntrustedConfigError: An override of the sweep names something not trusted.
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
    """Whether a sweep job continues the run an earlier attempt left unfinished in its folder
    (``RunFolder.left_unfinished``: a requeued SLURM job, a killed sweep); then sets
    ``cfg.resume`` to the folder and ``trainer.precision=auto`` to the run's choice, in place."""
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


#: ``ckpt_path`` values that Lightning looks up in the run's own (here: new) folder.
LIGHTNING_CKPT_NAMES = ("last", "best", "hpc", "registry")


def start_checkpoint(cfg: DictConfig) -> Path | None:
    """The checkpoint a run starts from: ``last.ckpt`` of ``resume``, the file
    ``ckpt_path``, or ``None`` for a fresh start.

    Raises:
        RunError: ``resume`` is not this run's folder or has no ``last.ckpt``, or its run
            finished and this command sets no new limit (``check_trains_further``); or
            ``ckpt_path`` is one of Lightning's names (``last``...), which would look in this
            new folder, or is not a file.
    """
    output_dir = Path(cfg.output_dir).resolve()
    resume, ckpt_path = cfg.get("resume"), cfg.get("ckpt_path")
    if resume and ckpt_path:
        raise RunError(f"resume={resume} and ckpt_path={ckpt_path} both say where to start; give one of them")
    if resume:
        if Path(resume).resolve() != output_dir:
            raise RunError(
                f"resume={resume}, but this run writes to {output_dir}; start it as "
                f"`{train_command()} resume={resume}`, which continues the run in its own folder"
            )
        last = RunFolder(output_dir).last_checkpoint(cfg)
        if not last.is_file():
            raise RunError(
                f"resume={resume}: the run has no checkpoint {last}, so there is nothing to continue "
                "(it stopped before its first epoch ended, or ran with callbacks.last_checkpoint=null); "
                "start it again as a new run"
            )
        status = RunFolder(output_dir).read_status()
        if status.get("status") == "finished":
            check_trains_further(cfg, resume, status)
        return last
    if ckpt_path is None:
        return None
    if str(ckpt_path) in LIGHTNING_CKPT_NAMES or str(ckpt_path).startswith("registry:"):
        raise RunError(
            f"ckpt_path={ckpt_path} would look for a checkpoint in this new run folder {output_dir}, "
            "find none, and train from scratch. To continue an earlier run use resume=<run folder>; "
            "to start from a checkpoint file, give its path, e.g. "
            f"ckpt_path=outputs/runs/<run>/{CHECKPOINTS}/{LAST_CHECKPOINT}"
        )
    if not Path(ckpt_path).is_file():
        raise RunError(
            f"ckpt_path={ckpt_path}: no such file; give the path of a .ckpt file from a run's checkpoints/ folder"
        )
    return Path(ckpt_path)


#: The Trainer's limits on training; a finished run trains further only when its resume sets one anew.
STOP_LIMITS = ("max_epochs", "max_steps", "max_time")


def stop_limits(cfg: DictConfig) -> dict[str, Any]:
    """``cfg``'s ``STOP_LIMITS`` as plain values (``limits`` of ``metrics.json``)."""
    return {
        key: OmegaConf.to_container(v) if isinstance(v := cfg.trainer.get(key), DictConfig) else v
        for key in STOP_LIMITS
    }


def _seconds(max_time: Any) -> float | None:
    """``trainer.max_time`` in seconds, as Lightning's ``Timer`` reads it; ``None``: no limit."""
    from lightning.pytorch.callbacks import Timer

    return None if max_time is None else Timer(duration=max_time)._duration


def _asks_for_more(key: str, value: Any, before: Any, status: dict) -> bool:
    """Whether limit ``key`` at ``value`` (``before`` earlier) lets a finished run train further."""
    if key != "max_time":  # -1 and null both mean no limit
        value, before = (None if v == -1 else v for v in (value, before))
    if value == before:
        return False
    if key == "max_time":
        now, then = _seconds(value), _seconds(before)
        return now is None or (then is not None and now > then)
    done = status.get("epochs", 0) if key == "max_epochs" else status.get("global_step", 0)
    return value in (None, -1) or value > done


def check_trains_further(cfg: DictConfig, resume: str, status: dict) -> None:
    """Refuses to continue a finished run unless this command sets one of ``STOP_LIMITS``
    beyond the value its last fit had (``limits`` of ``metrics.json``, else the saved config)
    and beyond what the run has done.

    Raises:
        RunError: No limit asks for more; the message names what ended the run and a limit to set.
    """
    before = status.get("limits") or stop_limits(RunFolder(cfg.output_dir).load_config(cfg.get(TRUST_KEY) or ()))
    now = stop_limits(cfg)
    if any(_asks_for_more(key, now[key], before.get(key), status) for key in STOP_LIMITS):
        return
    done, steps = status.get("epochs", 0), status.get("global_step", 0)
    more_epochs = f"trainer.max_epochs={done + 5}"
    reasons = {
        "max_epochs": (f"trainer.max_epochs={before.get('max_epochs')} ended it", more_epochs),
        "max_steps": (f"trainer.max_steps={before.get('max_steps')} ended it", f"trainer.max_steps={2 * steps}"),
        "max_time": (f"trainer.max_time={before.get('max_time')} ended it", _longer_time(before.get("max_time"))),
        "early_stopping": ("early stopping ended it", more_epochs),
    }
    ended, hint = reasons.get(status.get("stopped_by"), ("a limit or early stopping ended it", more_epochs))
    epochs = f"{done} epoch{'s' * (done != 1)}"
    raise RunError(
        f"resume={resume}: the run already finished ({ended} after {epochs}), and its result stays as it is "
        f"unless this command sets a limit beyond it; to train it further, give e.g. resume={resume} {hint} "
        "(docs/runs.md, Continuing a finished run)"
    )


def _longer_time(max_time: object) -> str:
    """``trainer.max_time=<twice max_time>`` for Lightning's ``DD:HH:MM:SS``; else a hint in words."""
    parts = str(max_time).split(":")
    if len(parts) != 4 or not all(p.isdigit() for p in parts):
        return "a longer trainer.max_time"
    days, hours, minutes, seconds = (int(p) for p in parts)
    total = 2 * (((days * 24 + hours) * 60 + minutes) * 60 + seconds)
    days, rest = divmod(total, 86400)
    return f"trainer.max_time={days:02d}:{rest // 3600:02d}:{rest % 3600 // 60:02d}:{rest % 60:02d}"
