"""MkDocs hooks: the tables that list methods, and the configuration reference, generated from ``conf/`` and the code.

A page asks for a table with a marker line, replaced when the site is built:

- ``<!-- generated: losses -->``: one row per ``conf/loss/*.yaml``;
- ``<!-- generated: scores -->``: one row per ``conf/score/*.yaml``;
- ``<!-- generated: rules -->``: one row per ``conf/select/*.yaml``;
- ``<!-- generated: config -->``: every config group, option and key of ``conf/``, with its YAML comment.

Each row reads the YAML's leading comment, its ``_target_`` and that class's docstring (first line), found by
parsing the source with :mod:`ast`, so a new loss, score or rule (one YAML, one class) appears without editing any
list. Scores and rules also show their name in tables and reports: a score's class ``label``, read from the source
(:func:`score_label`), and a rule's ``display_label()``, of the rule built from its YAML in a separate interpreter
(:func:`rule_labels`: many rules' labels follow from their settings). The PNG figures that ``bench/`` scripts write to ``bench/figures/`` are served as
``figures/<name>.png``.
"""

from __future__ import annotations

import ast
import functools
import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"
FIGURES = ROOT / "bench" / "figures"
MARKER = re.compile(r"^<!-- generated: (\w+) -->$", re.MULTILINE)
KEY = re.compile(r"^(\s*)([^\s#:'\"][^:#]*?):(?:\s+(.*))?$")


def on_files(files: Files, config: Any) -> Files:
    """Serve every PNG under ``bench/figures/`` as ``figures/<name>``, so pages show what the scripts last drew."""
    for png in sorted(FIGURES.glob("*.png")):
        files.append(File.generated(config, f"figures/{png.name}", abs_src_path=str(png)))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    """Replace each ``<!-- generated: NAME -->`` line by its table; an unknown NAME fails the build."""

    def table(match: re.Match) -> str:
        name = match.group(1)
        if name not in GENERATORS:
            raise ValueError(f"{page.file.src_path}: unknown generated table {name!r}; known: {sorted(GENERATORS)}")
        return GENERATORS[name]()

    return MARKER.sub(table, markdown)


def cell(text: str) -> str:
    """Text safe inside a Markdown table cell, on one line.

    Outside code spans, pipes, stars, brackets (``[x]`` reads as a link reference) and angle brackets are
    escaped; a docstring's double-backtick literal becomes a Markdown code span.
    """
    text = " ".join(text.split()).replace("``", "`")
    text = re.sub(r":(?:func|class|meth|mod|attr):(?=`)", "", text)  # Sphinx roles read as plain code here
    parts = re.split(r"(`[^`]*`)", text)
    for i, part in enumerate(parts):
        if not i % 2:  # a code span keeps its pipes: the table reader does not split inside one
            for char in "|*[]":
                part = part.replace(char, "\\" + char)
            parts[i] = part.replace("<", "&lt;")
    return "".join(parts)


def code(text: str) -> str:
    """A value as inline code in a table cell."""
    text = " ".join(str(text).split())
    return f"`{text}`" if text else ""


def header_comment(path: Path) -> str:
    """The comment lines a YAML file starts with (its description), joined."""
    out = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        if line.lstrip("# ").startswith(("the scorers this rule reads", "@package")):
            continue  # the same note in every rule's YAML, about its defaults list; Hydra's package directive
        out.append(line.lstrip("#").strip())
    return " ".join(out)


def load_option(path: Path) -> dict[str, Any]:
    """A group option's YAML, with the same-group options its ``defaults`` list names merged in first."""
    data = yaml.safe_load(path.read_text()) or {}
    merged: dict[str, Any] = {}
    for entry in data.pop("defaults", []) or []:
        if isinstance(entry, str) and entry != "_self_" and (path.parent / f"{entry}.yaml").is_file():
            merged.update(load_option(path.parent / f"{entry}.yaml"))
    merged.update(data)
    return merged


def find_definition(target: str) -> tuple[str, ast.ClassDef | ast.FunctionDef] | None:
    """``(module, node)`` of the class or function a dotted name names, parsed from the source without importing it."""
    module, _, name = target.rpartition(".")
    for _ in range(3):  # follow re-exports (``from x import Name`` in a package's __init__) a few levels deep
        base = ROOT / module.replace(".", "/")
        source = base.with_suffix(".py") if base.with_suffix(".py").is_file() else base / "__init__.py"
        if not source.is_file():
            return None
        tree = ast.parse(source.read_text())
        for node in tree.body:
            if isinstance(node, (ast.ClassDef, ast.FunctionDef)) and node.name == name:
                return module, node
        imported = [n for n in tree.body if isinstance(n, ast.ImportFrom) and any(a.name == name for a in n.names)]
        if not imported or not imported[0].module:
            return None
        module = imported[0].module
    return None


def class_docstring(target: str) -> str:
    """The first line of the docstring of the class a ``_target_`` names, read from the source without importing it."""
    found = find_definition(target)
    return (ast.get_docstring(found[1]) or "").split("\n\n")[0].replace("\n", " ") if found else ""


def class_string(target: str, attribute: str) -> str:
    """A string class attribute (``label = "IRM"``) of the class a ``_target_`` names, or of its bases, read from
    the source without importing it ("" when none sets one)."""
    found = find_definition(target)
    if not found or not isinstance(found[1], ast.ClassDef):
        return ""
    module, node = found
    for statement in node.body:
        targets = statement.targets if isinstance(statement, ast.Assign) else [getattr(statement, "target", None)]
        value = getattr(statement, "value", None)
        if any(isinstance(t, ast.Name) and t.id == attribute for t in targets) and isinstance(value, ast.Constant):
            return str(value.value)
    for base in node.bases:  # a base named in the same module, or imported into it
        if isinstance(base, ast.Name) and (inherited := class_string(f"{module}.{base.id}", attribute)):
            return inherited
    return ""


def score_label(path: Path, option: dict[str, Any]) -> str:
    """A score's name in tables, as :meth:`prefalign.scoring.base.Scorer.display_label` gives it for the column
    ``path.stem``: its class's ``label`` (with the column added when the YAML configures a class under another
    column name than the class's own), else the column name."""
    target = str(option.get("_target_", ""))
    label = class_string(target, "label") if target else ""
    if label and path.stem != class_string(target, "name"):
        return f"{label} ({path.stem})"
    return label or path.stem


RULE_LABELS = """
import json, sys
from pathlib import Path
from prefalign.selection.config import rule_config, select_rule
labels = {}
for path in sorted(Path("conf/select").glob("*.yaml")):
    node = rule_config(path.stem)
    if "seed" in node:
        node.seed = 0  # an interpolation of the run's seed; the seed does not change a label
    labels[path.stem] = select_rule(node).display_label()
json.dump(labels, sys.stdout)
"""


@functools.cache
def rule_labels() -> dict[str, str]:
    """Every ``conf/select/`` option's ``display_label()``, of the rule its YAML builds, as a run builds it.

    Many labels follow from the settings (``topk`` reads ``Top-k annotator``), so the rules are built, in a fresh
    interpreter started in this checkout: it imports this checkout's package (not whichever one the environment
    has installed) and keeps Hydra and pandas out of the docs build.
    """
    result = subprocess.run(
        [sys.executable, "-c", RULE_LABELS], cwd=ROOT, capture_output=True, text=True, check=False, timeout=300
    )
    if result.returncode:
        raise RuntimeError(f"conf/select: building the rules for their labels failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout)


def rule_label(path: Path, option: dict[str, Any]) -> str:
    """A rule's name in result tables (:meth:`prefalign.selection.rules.SelectionRule.display_label`)."""
    return rule_labels()[path.stem]


def settings(option: dict[str, Any]) -> str:
    """The option's keys other than ``_target_``, as ``key=value`` (nested keys dotted, those left null omitted)."""
    pairs = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), inner)
        elif "." not in prefix or value is not None:  # nested overrides left null mean "as the run's"
            pairs.append(f"{prefix}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}")

    values = {k: v for k, v in option.items() if not str(k).startswith("_")}
    if values:
        walk("", values)
    return "<br>".join(code(p) for p in pairs)


def method_table(
    group: str, command: str, first: str, label: Callable[[Path, dict[str, Any]], str] | None = None
) -> str:
    """One row per option of a group: its option name, its name in tables (``label``, where the group has one), what
    it does, the class and its settings."""
    named = "name | " if label else ""
    rows = [f"| {first} | {named}what | class | settings |", "|" + " --- |" * (5 if label else 4)]
    for path in sorted((CONF / group).glob("*.yaml")):
        option = load_option(path)
        target = str(option.get("_target_", ""))
        doc = class_docstring(target) if target else ""
        what = header_comment(path) or doc
        klass = code(target)
        if doc and doc != what:
            klass += f": {cell(doc)}"
        name = f"{cell(label(path, option))} | " if label else ""
        values = {key: value for key, value in option.items() if not (label and key == "label")}  # the name column
        rows.append(f"| `{command}{path.stem}` | {name}{cell(what)} | {klass} | {settings(values)} |")
    return "\n".join(rows) + "\n"


def yaml_rows(path: Path) -> list[tuple[str, str, str]]:
    """``(dotted key, default, comment)`` for every key of a YAML file, from its text (PyYAML drops comments).

    A key's comment is the comment block right above it plus its inline comment; the file's leading comment
    block is its description (:func:`header_comment`), not a key's.
    """
    rows: list[tuple[str, str, str]] = []
    stack: list[tuple[int, str]] = []
    pending: list[str] = []
    lines = path.read_text().splitlines()
    leading = True
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        stripped = line.strip()
        if leading and line.startswith("#"):
            continue
        leading = False
        if not stripped:
            pending = []
            continue
        if stripped.startswith("#"):
            pending.append(stripped.lstrip("#").strip())
            continue
        match = KEY.match(line)
        if not match or stripped.startswith("- "):
            continue
        indent, key, rest = len(match.group(1)), match.group(2).strip(), (match.group(3) or "")
        value, _, inline = rest.partition(" #") if not rest.startswith("#") else ("", "", rest[1:])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        dotted = ".".join([k for _, k in stack] + [key])
        if not value.strip():
            items = []  # a block list (defaults and the like) or a mapping below
            while i < len(lines) and (lines[i].strip().startswith(("- ", "#"))):
                if lines[i].strip().startswith("- "):
                    items.append(lines[i].strip()[2:].split(" #")[0].strip())
                elif not items:
                    break  # a comment before the first item belongs to what follows, not to a list
                i += 1
            value = f"[{', '.join(items)}]" if items else ""
            if not items:
                stack.append((indent, key))
        comment = " ".join([*pending, inline.strip()]).strip()
        rows.append((dotted, value.strip(), comment))
        pending = []
    return rows


def config_reference() -> str:
    """Every primary config and every group option of ``conf/``, each key with its default and comment."""
    out: list[str] = []

    def describe(path: Path, title: str) -> None:
        out.append(f"### {title}\n")
        description = header_comment(path)
        if description:
            out.append(cell(description) + "\n")
        rows = yaml_rows(path)
        if rows:
            out.append("| key | default | comment |\n| --- | --- | --- |")
            out.extend(f"| `{key}` | {code(value)} | {cell(comment)} |" for key, value, comment in rows)
            out.append("")

    out.append("## Primary configs\n")
    out.append("One per entry script: `python train.py` composes `conf/train.yaml`, and so on.\n")
    for path in sorted(CONF.glob("*.yaml")):
        describe(path, f"`{path.name}` (`python {path.stem}.py`)")
    groups = sorted({p.parent.relative_to(CONF).as_posix() for p in CONF.rglob("*.yaml") if p.parent != CONF})
    out.append("## Config groups\n")
    out.append("Pick an option with `group=option` (`loss=slic`); set one of its keys with `group.key=value`.\n")
    for group in groups:
        options = sorted((CONF / group).glob("*.yaml"))
        out.append(f"## `{group}`\n")
        out.append("Options: " + ", ".join(f"`{p.stem}`" for p in options) + ".\n")
        for path in options:
            describe(path, f"`{group}={path.stem}`")
    return "\n".join(out) + "\n"


GENERATORS = {
    "losses": lambda: method_table("loss", "loss=", "loss"),
    "scores": lambda: method_table("score", "", "score", score_label),
    "rules": lambda: method_table("select", "select=", "rule", rule_label),
    "config": config_reference,
}
