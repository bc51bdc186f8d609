"""Shared helpers of the benchmark scripts: composing prefalign configs, machine facts, the results file."""

from __future__ import annotations

import datetime
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
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


def sync() -> None:
    """Wait for the GPU's queued work, so that a clock read after it times the work (a no-op on the CPU)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def matmul_peak(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, repeats: int = 10) -> float:
    """The best dense GEMM throughput in FLOP/s over a few square sizes: the machine's practical peak for ``dtype``
    (float32 on this CPU; bfloat16 on a GPU, where it is the denominator of the model FLOPs utilisation).

    Both ``a @ b`` and ``linear(a, b) = a @ b.T`` (the kernel of a model's linear layers) are timed and the
    faster counts: they run alike in float32, but in bfloat16 on this CPU ``a @ b`` reaches ~1 GFLOP/s where
    ``linear`` reaches ~17, and a peak below what the model's own layers run at would overstate utilisation.
    """
    device = torch.device(device)
    if device.type == "cuda":
        sizes = (1024, 2048, 4096)
    elif dtype == torch.float32:
        sizes = (1024, 2048, 2048)
    else:  # bfloat16 a @ b on this CPU: one 2048 product would take 13 s
        sizes = (256, 512)
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
        for product in (torch.matmul, torch.nn.functional.linear):
            for _ in range(2):
                product(a, b)
            sync()
            start = time.perf_counter()
            for _ in range(repeats):
                product(a, b)
            sync()
            best = max(best, 2 * n**3 * repeats / (time.perf_counter() - start))
    return best


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


def converted_model_cache(cache: Path, model_cache: Path | None = None) -> Path:
    """``cache`` as a fresh cache (``paths.cache_dir``) holding only the converted models of ``model_cache`` (the
    default cache's, linked) and its tokenizers (copied): a run in it reuses no reference log-probs, scores or
    warm-ups."""
    model_cache = model_cache or Path("~/.cache/prefalign/models").expanduser()
    shutil.rmtree(cache, ignore_errors=True)
    (cache / "models").mkdir(parents=True)
    for entry in model_cache.iterdir():
        (cache / "models" / entry.name).symlink_to(entry)
    tokenizers = model_cache.parent / "tokenizers"
    if tokenizers.exists():
        shutil.copytree(tokenizers, cache / "tokenizers")
    return cache


def timed_run(command: list[str], cwd: Path = ROOT) -> dict[str, float]:
    """Run ``command`` (its output discarded; a failure raises) and return its wall time and its CPU time (user +
    system of the process and its children), which other work on the machine changes much less than the wall time."""
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    subprocess.run(command, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"wall_s": round(wall, 1), "cpu_s": round(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime, 1)}


def run_stage(command: list[str], log: Path) -> float:
    """Run one stage command in ``ROOT``, its output into ``log``; its wall seconds."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log, "w") as stream:
        result = subprocess.run(command, cwd=ROOT, stdout=stream, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    if result.returncode:
        sys.exit(f"{' '.join(command)} failed (exit {result.returncode}); its output: {log}")
    return seconds
