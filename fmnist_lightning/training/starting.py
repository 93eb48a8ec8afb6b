"""The checkpoint a run starts from: ``last.ckpt`` of ``resume=<run folder>`` (refused for a
finished run unless the command asks for more training), a checkpoint file of
``ckpt_path=``, or none."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from fmnist_lightning.errors import RunError
from fmnist_lightning.run_folder import CHECKPOINTS, LAST_CHECKPOINT, RunFolder
from fmnist_lightning.training.processes import train_command
from fmnist_lightning.trust import TRUST_KEY

#: ``ckpt_path`` values that Lightning looks up in the run's own (here: new) folder.
LIGHTNING_CKPT_NAMES = ("last", "best", "hpc", "registry")


def start_checkpoint(cfg: DictConfig) -> Path | None:
    """The checkpoint a run starts from: ``last.ckpt`` of ``resume``, the file
    ``ckpt_path``, or ``None`` for a fresh start.

    Raises:
        RunError: ``resume`` is not this run's folder or has no ``last.ckpt``, the run it
            names finished and this command sets no new limit (``check_trains_further``),
            ``ckpt_path`` is one of
            Lightning's names (``last``...) that would look in this new folder and silently
            start from scratch, or ``ckpt_path`` is not a file.
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
    """The Trainer's limits on training (``STOP_LIMITS``) in ``cfg``, as plain values: what a
    finished run's ``metrics.json`` records as ``limits``."""
    return {
        key: OmegaConf.to_container(v) if isinstance(v := cfg.trainer.get(key), DictConfig) else v
        for key in STOP_LIMITS
    }


def _seconds(max_time: Any) -> float | None:
    """``trainer.max_time`` in seconds, as Lightning's ``Timer`` reads it; ``None``: no limit."""
    from lightning.pytorch.callbacks import Timer

    return None if max_time is None else Timer(duration=max_time)._duration


def _asks_for_more(key: str, value: Any, before: Any, status: dict) -> bool:
    """Whether setting limit ``key`` to ``value`` (from ``before``) lets a finished run train
    further: a limit beyond what it has done, or none (``null``, or -1 for the counts)."""
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
    """Refuses to continue a finished run, a result, unless this command asks for more
    training: it sets one of ``STOP_LIMITS`` beyond the value that run's last fit had
    (``limits`` of ``metrics.json``; the saved config for a run of an older version) and
    beyond what the run has done (epochs, steps). What then stops it again is the Trainer's
    and the callbacks' restored state: the new limit, or early stopping, whose counters
    continue from the checkpoint.

    Raises:
        RunError: No limit asks for more; the message names what ended the run
            (``stopped_by`` of ``metrics.json``) and a limit to set.
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
    """``trainer.max_time=<twice max_time>`` for Lightning's ``DD:HH:MM:SS`` spelling
    (``00:00:10:00`` → ``00:00:20:00``); a hint in words for its other spellings."""
    parts = str(max_time).split(":")
    if len(parts) != 4 or not all(p.isdigit() for p in parts):
        return "a longer trainer.max_time"
    days, hours, minutes, seconds = (int(p) for p in parts)
    total = 2 * (((days * 24 + hours) * 60 + minutes) * 60 + seconds)
    days, rest = divmod(total, 86400)
    return f"trainer.max_time={days:02d}:{rest // 3600:02d}:{rest % 3600 // 60:02d}:{rest % 60:02d}"
