"""The documentation cannot rot: the site builds with ``mkdocs build --strict`` (a broken link, a missing page or an
unknown generated table fails), and every command the README and ``docs/`` show composes with Hydra.

The command test runs nothing: it composes each command's config exactly as its entry script's ``@hydra.main``
would (``conf/<script>.yaml``, the command's overrides), so a renamed option, group or config fails here.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SCRIPTS = ("train", "score", "select", "evaluate", "sample")
# a command: python <script>.py or torchrun [its options] <script>.py, then the arguments up to the line's end
COMMAND = re.compile(r"(?:python3?|torchrun(?: --?[\w-]+(?: \d+)?)*) ((?:train|score|select|evaluate|sample)\.py)\b(.*)")
PLACEHOLDER = re.compile(r"<[^<>]+>")
DUMMY = "/tmp/prefalign-docs/placeholder"
# Commands shown in the docs that are not one command of their own, and why. Keep this tiny.
SKIPPED_FILES = {
    # the worked examples' commands use the loss, score and rule the example adds, which do not exist until then
    "docs/extending.md",
}
SKIPPED = {
    # a training command's own overrides stand for whatever the user typed: "<its overrides>" has no value to compose
    "python train.py <its overrides> hydra.run.dir=<run dir> ckpt_path=last",
}


def doc_commands() -> list[tuple[str, int, str]]:
    """``(file, line, command)`` for every entry-script command in the README and ``docs/*.md``.

    Code blocks and inline code both count; a line ending in a backslash continues on the next; a shell chain
    (``cmd && python evaluate.py ...``) gives each of its commands.
    """
    found = []
    for path in DOCS:
        lines = path.read_text().splitlines()
        i = 0
        while i < len(lines):
            start, line = i, lines[i]
            while line.rstrip().endswith("\\") and i + 1 < len(lines):
                i += 1
                line = line.rstrip()[:-1] + " " + lines[i].strip()
            i += 1
            for span in re.findall(r"`([^`]+)`", line) if "`" in line and not line.startswith("```") else [line]:
                for part in re.split(r"\s&&\s", span):
                    match = COMMAND.search(part)
                    if match:
                        command = re.sub(r"\s+#\s.*$", "", match.group(0)).strip()  # its shell comment
                        found.append((path.relative_to(ROOT).as_posix(), start + 1, command))
    return found


def overrides_of(command: str) -> tuple[str, list[str]]:
    """The config name and the overrides a command gives Hydra: placeholders replaced by a dummy path (a config
    group's placeholder by its first option), a ``-m`` sweep's comma lists by their first value."""
    match = COMMAND.search(command)
    script = match.group(1).removesuffix(".py")
    words = shlex.split(PLACEHOLDER.sub("PLACEHOLDER", match.group(2)), comments=True)
    sweep = "-m" in words or "--multirun" in words
    overrides = []
    for word in words:
        if word in ("-m", "--multirun") or "=" not in word:
            continue  # "-m", or a lone placeholder standing for several overrides
        key, _, value = word.partition("=")
        group = CONF / key.lstrip("+~").split("@")[0]
        if value == "PLACEHOLDER" and group.is_dir():
            value = sorted(group.glob("*.yaml"))[0].stem
        value = value.replace("PLACEHOLDER", DUMMY)
        if sweep and "," in value and not value.startswith(("[", "{", "'", '"')):
            value = value.split(",")[0]
        overrides.append(f"{key}={value}")
    return script, overrides


COMMANDS = doc_commands()


def test_the_docs_show_commands():
    """The extraction finds the commands (a broken pattern would make the test below vacuous)."""
    scripts = {overrides_of(command)[0] for _, _, command in COMMANDS}
    print(f"{len(COMMANDS)} commands in README.md and docs/")
    assert set(SCRIPTS) <= scripts
    assert len(COMMANDS) >= 100
    assert SKIPPED <= {command for _, _, command in COMMANDS}, "a skipped command is no longer in the docs"


def test_every_documented_command_composes():
    # one Hydra initialisation for all, and each distinct command once (the docs repeat some in several places)
    where_of: dict[tuple[str, tuple[str, ...]], list[str]] = {}
    skipped = 0
    for where, line, command in COMMANDS:
        if command in SKIPPED or where in SKIPPED_FILES:
            skipped += 1
            continue
        script, overrides = overrides_of(command)
        where_of.setdefault((script, tuple(overrides)), []).append(f"{where}:{line}: {command}")
    failures = []
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for (script, overrides), places in where_of.items():
            try:
                compose(config_name=script, overrides=list(overrides), return_hydra_config=True)
            except Exception as error:  # noqa: BLE001 - every failure is reported with its commands
                failures.append("\n".join(places) + f"\n    {type(error).__name__}: {str(error).splitlines()[0]}")
    print(f"{len(where_of)} distinct of {len(COMMANDS)} documented commands composed ({skipped} skipped)")
    assert skipped <= 8, "keep the skipped commands few"
    assert not failures, "documented commands that do not compose:\n" + "\n".join(failures)


def has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a missing parent package
        return False


def test_site_builds_strict(tmp_path):
    """``mkdocs build --strict``: broken links, missing pages, bad API references and unknown tables fail."""
    missing = [name for name in ("mkdocs", "material", "mkdocstrings_handlers.python") if not has_module(name)]
    if missing:
        pytest.skip(f"the documentation tools are not installed ({', '.join(missing)}); pip install -e '.[dev]'")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "site" / "selection" / "index.html").is_file()
    assert "prefalign.losses.DPOLoss" in (tmp_path / "site" / "training" / "index.html").read_text()
