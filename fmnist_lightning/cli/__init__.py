"""The commands (``[project.scripts]`` in pyproject.toml), one module each, also run as
``python -m fmnist_lightning.cli.<command>``. Each composes its config from
``pkg://fmnist_lightning.conf`` (a package, so that ``python -m`` finds it too) and writes
under ``outputs/`` in the working directory."""

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib.util import find_spec
from pathlib import Path

#: Keys whose values are paths, which ``hydra_argv`` quotes where Hydra's grammar cannot read them.
PATH_KEYS = (
    "resume", "run_dir", "sweep_dir", "hydra.run.dir", "hydra.sweep.dir", "data.root", "data_root",
    "output", "ckpt_path", "reference", "cache_dir",
)  # fmt: skip
#: Keys whose values are lists of paths (``images=[a.png,b.png]``), quoted element by element.
PATH_LIST_KEYS = ("images", "run_dir")


def require_configs() -> None:
    """Stops with a clear message when the configs were never installed (a clone on ``PYTHONPATH``).

    Raises:
        SystemExit: ``fmnist_lightning.conf`` is not importable.
    """
    if find_spec("fmnist_lightning.conf") is None:
        raise SystemExit(
            "error: the configs (the package fmnist_lightning.conf, conf/ in a clone) are not installed; "
            "in a clone run `bash scripts/setup.sh` (or `pip install -e .`), else `pip install fmnist-lightning`"
        )


def find_sweepers() -> None:
    """Lets Hydra find this project's sweepers in an editable install too: Hydra walks the
    ``hydra_plugins`` namespace's folders, which do not see setuptools' editable import hook."""
    import hydra_plugins

    folder = Path(__file__).resolve().parents[2] / "hydra_plugins"
    if (folder / "fmnist_lightning_sweepers").is_dir() and str(folder) not in list(hydra_plugins.__path__):
        hydra_plugins.__path__.append(str(folder))


def hydra_argv(expand: Callable[[list[str]], list[str]] | None = None) -> None:
    """The one place a command adjusts ``sys.argv`` before ``@hydra.main`` reads it: a path of
    ``PATH_KEYS`` (or each of a list, ``PATH_LIST_KEYS``) that Hydra's grammar cannot parse is
    quoted in Hydra's way (``run_dir=/tmp/my run/ñ`` → ``run_dir='/tmp/my run/ñ'``); then
    ``expand``, a command's own shorthand, maps the arguments to a longer command line.

    Raises:
        SystemExit: ``error: ...`` for a refusal (``UserError``) of ``expand``.
    """
    from fmnist_lightning.errors import UserError
    from fmnist_lightning.overrides import parse_override, quoted

    args = []
    for arg in sys.argv[1:]:
        override = parse_override(arg)
        typed = override.typed
        if typed is not None and not override.parsed and override.key in (*PATH_KEYS, *PATH_LIST_KEYS):
            listed = override.key in PATH_LIST_KEYS and typed.startswith("[") and typed.endswith("]")
            value = f"[{','.join(quoted(p.strip()) for p in typed[1:-1].split(','))}]" if listed else quoted(typed)
            arg = f"{arg[: len(arg) - len(typed)]}{value}"
        args.append(arg)
    if expand is not None:
        try:
            args = expand(args)
        except UserError as err:
            raise SystemExit(f"error: {err}") from None
    sys.argv[1:] = args


@contextmanager
def errors_as_lines(output_dir: str | Path) -> Iterator[None]:
    """Ends a command that writes into ``output_dir`` with one ``error:`` line (exit status 1)
    for a refusal (``UserError``) or a failed write (``OSError``).

    Raises:
        SystemExit: In place of either.
    """
    from fmnist_lightning.errors import UserError
    from fmnist_lightning.run_folder import write_failure

    try:
        yield
    except UserError as err:
        raise SystemExit(f"error: {err}") from None
    except OSError as err:
        raise SystemExit(f"error: {write_failure(err, Path(output_dir))}") from None
