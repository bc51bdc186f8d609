"""Shared helpers of the benchmark scripts: composing prefalign configs, machine facts, the results file."""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "RESULTS.md"


def train_config(overrides: list[str], output_dir: Path) -> DictConfig:
    """The ``train`` config with overrides, as ``train.py`` would compose it."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="train", overrides=[*overrides, f"paths.output_dir={output_dir}"])


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    facts: dict[str, Any] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
    }
    if torch.cuda.is_available():
        facts["gpu"] = torch.cuda.get_device_name(0)
    try:
        import transformers

        facts["transformers"] = transformers.__version__
    except ImportError:
        pass
    try:
        facts["commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return facts


def append_result(title: str, command: str, settings: dict[str, Any], table: str, facts: dict[str, Any]) -> None:
    """Append one measured result (with its command, settings and machine) to ``bench/RESULTS.md``."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    block = [
        f"## {title} ({stamp})",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {json.dumps(facts)}",
        "",
        f"Settings: {json.dumps(settings)}",
        "",
        table,
        "",
    ]
    if not RESULTS.exists():
        RESULTS.write_text("# Benchmark results\n\nEach block is appended by a script in `bench/`; numbers are measured, never edited.\n\n")
    with open(RESULTS, "a") as stream:
        stream.write("\n".join(block) + "\n")


def markdown(rows: list[dict[str, Any]]) -> str:
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    for row in rows:
        lines.append("| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row.values()) + " |")
    return "\n".join(lines)


def run_worker(name: str, command: list[str]) -> dict[str, Any]:
    """Run one benchmark worker in a process of its own; its measurements, from its ``RESULT {json}`` line."""
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    lines = [text for text in result.stdout.splitlines() if text.startswith("RESULT ")]
    if result.returncode or not lines:
        sys.exit(f"{name} failed:\n{result.stderr[-4000:]}")
    measured = json.loads(lines[-1][len("RESULT "):])
    print(f"{name}: {measured}", flush=True)
    return measured
