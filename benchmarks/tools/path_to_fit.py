"""The way of a run, measured: the project's own modules and functions that ``python train.py
ARGS`` calls from its start until Lightning's ``Trainer.fit`` is first entered.

    python benchmarks/tools/path_to_fit.py model=three_conv debug=fdr
    python benchmarks/tools/path_to_fit.py experiment=fast trainer.max_epochs=1   # any train.py arguments

It runs the repository's ``train.py`` in this process, with ``ARGS`` as its command line and
in the working directory, as ``python train.py ARGS`` would (the repository is found from this
file, so it may be started from any folder). A profile hook (``sys.setprofile``, and
``threading.setprofile`` for the threads started meanwhile) records every call of a function
defined in ``fmnist_lightning/`` or ``train.py``; module and class bodies, lambdas and
comprehensions are not counted. At the first call of ``Trainer.fit``
(``lightning/pytorch/trainer/trainer.py``) it prints one line to stderr and switches itself off:

    PATH_TO_FIT {"modules": [...], "functions": [...], "calls": N, "cfg_path": [...], "cfg_entries": {...}}

``modules``: the files, relative to the repository, of which at least one function was called;
``functions``: ``<file>:<qualified name>`` of each function called; ``calls``: the number of
calls in all. It is a dynamic measure of how much of the package one run goes through before
training starts (an import graph counts what is imported, not what runs).

``cfg_path`` follows the config: from the call of ``training/pipeline.py:train`` on, each call
of a project function that is given that very ``cfg`` object as an argument, in call order;
``cfg_entries`` counts, per module, how often that path enters it from another module.

The run then goes on to its end as usual (``debug=fdr`` makes that quick), and its exit status
is this script's. A run that ends before ``Trainer.fit`` (a refused config) prints a note instead of the line.
"""

from __future__ import annotations

import json
import os
import runpy
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
TRAIN = ROOT / "train.py"
PACKAGE = f"{ROOT / 'fmnist_lightning'}{os.sep}"
FIT = os.path.join("lightning", "pytorch", "trainer", "trainer.py")
CO_OPTIMIZED = 0x1  # set on the code of functions and methods; not on module or class bodies

modules: set[str] = set()
functions: set[str] = set()
calls = 0
reached = False
cfg: list[Any] = []  # the config given to pipeline.train, once it is called
cfg_path: list[str] = []


def profile(frame: FrameType, event: str, arg: Any) -> None:
    """The hook: counts each call of a project function until ``Trainer.fit`` is entered."""
    global calls, reached
    if reached or event != "call":
        return
    code = frame.f_code
    filename = code.co_filename
    if code.co_name == "fit" and filename.endswith(FIT):
        reached = True
        sys.setprofile(None)
        threading.setprofile(None)  # type: ignore[arg-type]
        found = {"modules": sorted(modules), "functions": sorted(functions), "calls": calls}
        found |= {"cfg_path": cfg_path, "cfg_entries": entries(cfg_path)}
        print(f"PATH_TO_FIT {json.dumps(found)}", file=sys.__stderr__, flush=True)
        return
    if not (filename.startswith(PACKAGE) or filename == str(TRAIN)):
        return
    if not code.co_flags & CO_OPTIMIZED or code.co_name.startswith("<"):  # modules, classes, lambdas, comprehensions
        return
    relative = os.path.relpath(filename, ROOT)
    function = f"{relative}:{getattr(code, 'co_qualname', code.co_name)}"
    modules.add(relative)
    functions.add(function)
    calls += 1
    if not cfg and function == "fmnist_lightning/training/pipeline.py:train":
        cfg.append(frame.f_locals["cfg"])
    arguments = code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]
    if cfg and any(frame.f_locals.get(name) is cfg[0] for name in arguments):
        cfg_path.append(function)


def entries(path: list[str]) -> dict[str, int]:
    """How often ``path`` (``<file>:<function>`` in call order) enters each file from another one."""
    counts: dict[str, int] = {}
    previous = None
    for function in path:
        module = function.split(":")[0]
        if module != previous:
            counts[module] = counts.get(module, 0) + 1
        previous = module
    return counts


def main() -> None:
    """Runs ``train.py`` with this command line's arguments under the hook."""
    sys.argv = [str(TRAIN), *sys.argv[1:]]
    sys.path[0] = str(ROOT)  # what `python train.py` puts first
    sys.setprofile(profile)
    threading.setprofile(profile)
    try:
        runpy.run_path(str(TRAIN), run_name="__main__")
    finally:
        sys.setprofile(None)
        threading.setprofile(None)  # type: ignore[arg-type]
        if not reached:
            print("path_to_fit: the run ended before Trainer.fit was entered", file=sys.__stderr__, flush=True)


if __name__ == "__main__":
    main()
