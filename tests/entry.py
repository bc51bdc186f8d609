"""The entry scripts in-process, as the command line runs them, without a new interpreter.

``run_cli("train", "model=tiny_llama", ...)`` runs ``train.py``'s Hydra ``main()`` with those arguments in this
process: Hydra composes the config, makes the run folder, runs the callbacks and the job (or, with ``-m``, every
job of the sweep) exactly as ``python train.py ...`` does, and the result has a ``CompletedProcess``'s fields. It
saves each test the interpreter start and the torch, Lightning and transformers imports (8-10 s on 2 cores).

Kept as subprocesses, on purpose: several processes (DDP, two runs racing), signals and kills, and the tests of
what a new interpreter does (import counts, the time to a typo's error).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

ROOT = Path(__file__).resolve().parents[1]
_ENTRY_POINTS: dict[str, ModuleType] = {}


def entry_point(name: str) -> ModuleType:
    """An entry script (``train``, ``select``, ...) as a module, under a name that shadows nothing (``select.py``
    would shadow the standard library's ``select``); loaded once per test session."""
    if name not in _ENTRY_POINTS:
        spec = importlib.util.spec_from_file_location(f"{name}_entry", ROOT / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        # Hydra finds conf/ next to the file of a task function defined in __main__ (a script), and looks for a
        # package otherwise: the script's main() is the script's, wherever it is loaded from
        module.main.__wrapped__.__module__ = "__main__"
        _ENTRY_POINTS[name] = module
    return _ENTRY_POINTS[name]


def compose_config(primary: str, *overrides: str):
    """``conf/<primary>.yaml`` composed with the overrides, as the entry script would see it (no Hydra run)."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(primary, overrides=list(overrides))


@dataclass
class CliResult:
    """What ``subprocess.run(..., capture_output=True, text=True)`` would give for the same command."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str


def run_cli(script: str, *args: str, env: dict[str, str] | None = None) -> CliResult:
    """``python <script>.py <args>`` in this process (see the module docstring).

    An exception the command would print as Hydra's error report ends the run with return code 1 and the full
    traceback (with the message) in ``stderr``; ``SystemExit`` keeps its code. ``env`` sets environment variables
    for the run only.
    """
    module = entry_point(script)
    stdout, stderr = io.StringIO(), io.StringIO()
    saved_argv, saved_cwd, saved_env = sys.argv, os.getcwd(), dict(os.environ)
    code = 0
    GlobalHydra.instance().clear()
    try:
        sys.argv = [str(ROOT / f"{script}.py"), *args]
        os.environ.update({"HYDRA_FULL_ERROR": "1", **(env or {})})
        os.chdir(ROOT)
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                module.main()
            except SystemExit as stop:
                code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
                if isinstance(stop.code, str):
                    print(stop.code, file=sys.stderr)
            except Exception:  # noqa: BLE001 - the command line would print it and exit 1
                traceback.print_exc()
                code = 1
    finally:
        sys.argv = saved_argv
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        GlobalHydra.instance().clear()
    return CliResult([script, *args], code, stdout.getvalue(), stderr.getvalue())
