"""MT-Bench as FastChat defines it: the constants of ``fastchat/llm_judge/common.py`` and its judge prompts.

The constants (``NEED_REF_CATS``, ``temperature_config``, ``one_score_pattern``, ``one_score_pattern_backup``) are
read from the installed ``fschat`` package's source, never retyped here. ``common.py`` cannot be imported cheaply
(it imports ``openai<1``, ``anthropic`` and FastChat's model adapter), so its source is located through
``importlib.util.find_spec("fastchat")`` and parsed with :mod:`ast`: the literal values assigned to the names, and
the string argument of ``re.compile(...)`` for the patterns. Every judgement records where they came from
(:meth:`FastChatConstants.provenance`: the file and ``importlib.metadata.version("fschat")``).

The judge prompts live in FastChat's ``fastchat/llm_judge/data/judge_prompts.jsonl``, which neither the fschat
wheel nor its sdist ships: :func:`load_judge_prompts` reads that file from a path (``judge.prompts_file``), one
JSON object per line with ``name``, ``type``, ``system_prompt``, ``prompt_template``, ``output_format`` and
``category``, keyed by ``name`` as FastChat's own ``load_judge_prompts`` does.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# where to get the judge prompts, named in every error about them
PROMPTS_SOURCE = (
    "FastChat's judge prompts: https://github.com/lm-sys/FastChat, tag v0.2.36, file "
    "fastchat/llm_judge/data/judge_prompts.jsonl"
)
PROMPT_KEYS = ("name", "type", "system_prompt", "prompt_template", "output_format")


class FastChatUnavailable(RuntimeError):
    """The installed fschat package, or what prefalign reads from it, is missing."""


@dataclass(frozen=True)
class FastChatConstants:
    """What prefalign reads from FastChat's ``fastchat/llm_judge/common.py``.

    Attributes:
        need_ref_cats: the categories judged with a reference answer (``NEED_REF_CATS``).
        temperature_config: the generation temperature of each category (``temperature_config``).
        one_score_pattern, one_score_pattern_backup: the ``[[rating]]`` patterns, the second tried when the
            first finds nothing.
        source: the file they were read from.
        version: ``importlib.metadata.version("fschat")``.
    """

    need_ref_cats: tuple[str, ...]
    temperature_config: dict[str, float]
    one_score_pattern: re.Pattern
    one_score_pattern_backup: re.Pattern
    source: str
    version: str

    def provenance(self) -> dict[str, Any]:
        return {"package": "fschat", "version": self.version, "source": self.source}

    def parse_rating(self, judgment: str) -> float | None:
        """The rating of a single-answer judgement as FastChat's ``run_judge_single`` reads it: the first match of
        ``one_score_pattern``, else of ``one_score_pattern_backup``, evaluated as a Python literal; ``None`` where
        FastChat records -1 (no match). FastChat does not check the range, so neither does this."""
        match = self.one_score_pattern.search(judgment) or self.one_score_pattern_backup.search(judgment)
        if not match:
            return None
        return float(ast.literal_eval(match.groups()[0]))


def common_source() -> Path:
    """The path of the installed ``fastchat/llm_judge/common.py``, found without importing it."""
    try:
        spec = importlib.util.find_spec("fastchat")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise FastChatUnavailable(
            "the mt_bench judge reads FastChat's constants from the fschat package, which is not installed: "
            "pip install 'prefalign[eval]' (fschat==0.2.36)"
        )
    for location in spec.submodule_search_locations:
        path = Path(location) / "llm_judge" / "common.py"
        if path.is_file():
            return path
    raise FastChatUnavailable(f"fschat is installed at {list(spec.submodule_search_locations)} but has no llm_judge/common.py")


def _assigned_values(path: Path) -> dict[str, ast.expr]:
    """The value expression of every module-level ``NAME = ...`` in the file."""
    with warnings.catch_warnings():
        # the file's regular expressions are plain strings with backslashes (invalid escape sequence warnings)
        warnings.simplefilter("ignore")
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    values: dict[str, ast.expr] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            values[node.targets[0].id] = node.value
    return values


def _literal(values: dict[str, ast.expr], name: str, path: Path) -> Any:
    if name not in values:
        raise FastChatUnavailable(f"{path}: no module-level assignment to {name}")
    try:
        return ast.literal_eval(values[name])
    except ValueError:
        raise FastChatUnavailable(f"{path}: {name} is not a literal") from None


def _compiled_pattern(values: dict[str, ast.expr], name: str, path: Path) -> re.Pattern:
    """The pattern of ``NAME = re.compile("...")``."""
    node = values.get(name)
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "compile"
        and node.args
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    ):
        return re.compile(node.args[0].value)
    raise FastChatUnavailable(f"{path}: {name} is not an assignment of re.compile(<string>)")


@functools.lru_cache(maxsize=None)
def fastchat_constants() -> FastChatConstants:
    """FastChat's MT-Bench constants, read from the installed fschat's source (module docstring)."""
    path = common_source()
    values = _assigned_values(path)
    need_ref_cats = _literal(values, "NEED_REF_CATS", path)
    temperatures = _literal(values, "temperature_config", path)
    if not isinstance(need_ref_cats, list) or not all(isinstance(c, str) for c in need_ref_cats):
        raise FastChatUnavailable(f"{path}: NEED_REF_CATS is not a list of category names")
    if not isinstance(temperatures, dict):
        raise FastChatUnavailable(f"{path}: temperature_config is not a dict")
    try:
        version = importlib.metadata.version("fschat")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return FastChatConstants(
        need_ref_cats=tuple(need_ref_cats),
        temperature_config={str(category): float(value) for category, value in temperatures.items()},
        one_score_pattern=_compiled_pattern(values, "one_score_pattern", path),
        one_score_pattern_backup=_compiled_pattern(values, "one_score_pattern_backup", path),
        source=str(path),
        version=version,
    )


def load_judge_prompts(path: str | Path) -> dict[str, dict[str, Any]]:
    """FastChat's judge prompts from its ``judge_prompts.jsonl``, keyed by ``name``.

    Raises:
        FileNotFoundError: the file does not exist (the message says where to get it).
        ValueError: a line that is not a JSON object with the keys FastChat's judge reads (file and line named).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"judge.prompts_file={path}: no such file; the mt_bench judge needs {PROMPTS_SOURCE}")
    prompts: dict[str, dict[str, Any]] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{number}: not JSON ({error.msg})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{number}: not a JSON object")
        missing = [key for key in PROMPT_KEYS if key not in row]
        if missing:
            raise ValueError(f"{path}:{number}: missing key {missing[0]!r} (a judge prompt has {', '.join(PROMPT_KEYS)})")
        prompts[row["name"]] = row
    return prompts


def file_digest(path: str | Path) -> str:
    """The SHA-256 of a file, recorded so that a result names exactly which prompts produced it."""
    return hashlib.sha256(Path(path).expanduser().read_bytes()).hexdigest()
