"""Is B better than A? ``fmnist-compare <run or sweep A> <run or sweep B>`` (docs/comparing.md):
two runs image by image (``evaluation.compare``), two sweeps over seeds (``sweeps.compare``)."""

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from fmnist_lightning.artifacts import write_atomically
from fmnist_lightning.errors import UserError


def without_nan(value: Any) -> Any:
    """``value`` with every NaN float replaced by ``None`` (JSON's null): strict JSON has no NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: without_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_nan(v) for v in value]
    return value


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="fmnist-compare",
        description="Compare two runs on the same test images, or two sweeps over seeds: "
        "the difference with its 95 %% interval, a test and a verdict.",
    )
    parser.add_argument("a", type=Path, help="run A: a run folder, an fmnist-evaluate folder, or a sweep folder")
    parser.add_argument("b", type=Path, help="run B: of the same kind as A")
    parser.add_argument("--json", action="store_true", help="print JSON instead of Markdown")
    parser.add_argument("--output", type=Path, help="also write comparison.md and comparison.json into this folder")
    parser.add_argument("--seed", type=int, default=0, help="the bootstrap's seed (runs; default 0)")
    trust = "a module of your own that the runs' configs may name (repeatable; docs/runs.md, Sharing runs safely)"
    parser.add_argument("--trust", action="append", default=[], metavar="MODULE", help=trust)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """The command line; exits with 1 and an ``error:`` line on bad input."""
    args = parse(sys.argv[1:] if argv is None else argv)
    from fmnist_lightning.evaluation.compare import compare_runs, comparison_markdown
    from fmnist_lightning.sweeps.compare import compare_sweeps, is_sweep, sweep_comparison_markdown

    try:
        for folder in (args.a, args.b):
            if not folder.is_dir():
                raise UserError(f"{folder} is not a folder: pass two run folders, or two sweep folders")
        sweeps = is_sweep(args.a), is_sweep(args.b)
        if sweeps[0] != sweeps[1]:
            raise UserError(
                f"{args.a} is a {'sweep' if sweeps[0] else 'run'} and {args.b} a {'sweep' if sweeps[1] else 'run'}: "
                "compare a run with a run (image by image) or a sweep with a sweep (over seeds)"
            )
        if args.output is not None and args.output.exists() and not args.output.is_dir():
            raise UserError(f"--output {args.output} is a file; give a folder")
        if sweeps[0]:
            result = compare_sweeps(args.a, args.b, args.trust)
            markdown = sweep_comparison_markdown(result)
        else:
            result = compare_runs(args.a, args.b, args.seed, args.trust)
            markdown = comparison_markdown(result)
    except (UserError, FileNotFoundError) as err:
        raise SystemExit(f"error: {err}") from None
    text = json.dumps(without_nan(result), indent=2, allow_nan=False) + "\n"
    if args.output is not None:
        args.output.mkdir(parents=True, exist_ok=True)
        write_atomically(args.output / "comparison.md", markdown)
        write_atomically(args.output / "comparison.json", text)
    print(text if args.json else markdown, end="")


if __name__ == "__main__":  # python -m fmnist_lightning.cli.compare
    main()
