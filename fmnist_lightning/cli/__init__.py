"""The commands: ``fmnist-train``, ``fmnist-evaluate``, ``fmnist-predict``, ``fmnist-summarize``,
``fmnist-export``, ``fmnist-serve``, ``fmnist-compare`` and ``fmnist-robustness``
(``[project.scripts]`` in pyproject.toml), one module each, also run as
``python -m fmnist_lightning.cli.<command>`` (and training as ``python train.py`` in a clone).
Each composes its config from ``pkg://fmnist_lightning.conf`` (the repository's ``conf/`` in
a clone), named as a package rather than relative to the module's file so that ``python -m``
finds it too, and writes under ``outputs/`` in the working directory."""

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib.util import find_spec
from pathlib import Path

#: Keys whose values are paths: a value Hydra's grammar cannot read as typed (a space next to
#: a non-ASCII letter, say) is quoted for it by ``hydra_argv``.
PATH_KEYS = (
    "resume",
    "run_dir",
    "sweep_dir",
    "hydra.run.dir",
    "hydra.sweep.dir",
    "data.root",
    "data_root",
    "output",
    "ckpt_path",
    "reference",
    "cache_dir",
)
#: Keys whose values are lists of paths (``images=[a.png,b.png]``): each element Hydra's
#: grammar cannot read as typed is quoted, the list split at its commas.
PATH_LIST_KEYS = ("images",)


def require_configs() -> None:
    """Stops with a clear message when the configs cannot be found, as when the repository is
    on ``PYTHONPATH`` but was never installed (the mapping of ``conf/`` to
    ``fmnist_lightning.conf`` is made by the install).

    Raises:
        SystemExit: ``fmnist_lightning.conf`` is not importable.
    """
    if find_spec("fmnist_lightning.conf") is None:
        raise SystemExit(
            "error: the configs (the package fmnist_lightning.conf, conf/ in a clone) are not installed; "
            "in a clone run `bash scripts/setup.sh` (or `pip install -e .`), else `pip install fmnist-lightning`"
        )


def find_sweepers() -> None:
    """Lets Hydra find this project's sweepers (``hydra/sweeper=grid``, ``optuna``) in an
    editable install too. Hydra looks for plugins by walking the ``hydra_plugins`` namespace
    package's folders; a wheel installs ``hydra_plugins/fmnist_lightning_sweepers`` into
    site-packages, but setuptools' editable install adds the clone's folder to that namespace
    only through an import hook that such a walk does not see. The clone's ``hydra_plugins``
    folder is then added to the namespace's path here."""
    import hydra_plugins

    folder = Path(__file__).resolve().parents[2] / "hydra_plugins"
    if (folder / "fmnist_lightning_sweepers").is_dir() and str(folder) not in list(hydra_plugins.__path__):
        hydra_plugins.__path__.append(str(folder))


def hydra_argv(expand: Callable[[list[str]], list[str]] | None = None) -> None:
    """The one place a command adjusts its command line before Hydra parses it: ``sys.argv``
    is what ``@hydra.main`` reads, and Hydra offers no public way to hand it arguments
    otherwise. Two adjustments, nothing else:

    1. a path given as one shell word, whatever it holds: each ``<path key>=<value>``
       (``PATH_KEYS``) that Hydra's grammar cannot parse (``run_dir=/tmp/my run/ñ``) is
       quoted in Hydra's way (``run_dir='/tmp/my run/ñ'``), and so is each path of a list
       (``PATH_LIST_KEYS``: ``images=[/tmp/a run/é.png]``); values Hydra reads already,
       quoted ones included, are left as they are;
    2. ``expand``: a command's own shorthand for a longer command line, given the arguments
       and returning them (``fmnist-train resume=<sweep folder>`` is the sweep's own command,
       ``training.resume.continue_sweep``; ``fmnist-summarize <folder>`` is
       ``sweep_dir=<folder>``).

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
    instead of a traceback: for a refusal (``UserError``), and for a write that failed (an
    ``OSError``: a read-only folder, a full disk; said by ``write_failure``).

    Raises:
        SystemExit: In place of either.
    """
    from fmnist_lightning.errors import UserError
    from fmnist_lightning.training.run_dirs import write_failure

    try:
        yield
    except UserError as err:
        raise SystemExit(f"error: {err}") from None
    except OSError as err:
        raise SystemExit(f"error: {write_failure(err, Path(output_dir))}") from None
