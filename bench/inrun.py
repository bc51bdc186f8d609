"""In-run influence: its cost per training step and per refresh of ``v``, its exactness on real weights, and the
selection pipeline with the scores taken from the warm-up's record, each side by side with its baseline.

    python -m bench.inrun [--model smollm2_135m] [--steps 12] [--check-pairs 64]
    python -m bench.inrun --steps 0 --pipeline 384 [--pipeline 3000] --work W   # the whole pipeline, twice per size (long; resumable in W)

**Steps** (one process, the embedded default unless ``--model``): the run's training step (the module's forward
with its log-prob settings, the mean loss's backward, an AdamW step) timed ``--steps`` times plain and
``--steps`` times with the ghost products collected (:mod:`prefalign.inrun.ghost`), alternating in blocks so
that drift on a shared machine falls on both; then one refresh of ``v`` on the validation pairs. It prints the
median step of each, their ratio (the overhead without refreshes), and the overhead of a one-epoch run with the
default schedule (one refresh at the epoch's start): ``(steps x ghost step + refresh) / (steps x plain step)``
for the epoch's number of steps.

**Exactness on real weights** (``--check-pairs``): the in-run IF of that many training pairs at the initial
weights, from the training backward pass, against the ``influence`` scorer's JVP with the same ``v`` (float32,
the model's dtype): the largest relative difference and its median.

**Pipeline** (``--pipeline N``, each size twice, each run a process of its own with a cache of its own that holds
only the converted model): ``train.py select=tif data.max_train_pairs=N`` with the influence scored on the
warm-up policy (today's default, ``pipeline.scores_from=scoring``) and with it taken from the warm-up's in-run
record (``pipeline.scores_from=warmup``); wall and CPU times of the whole pipelines and their ratios (the CPU
time, of the pipeline process and its children, is the fairer measure when other work shares the machine).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.common import ROOT, append_result, converted_model_cache, machine, sync, timed_run, train_config
from prefalign.atomic import write_json


def setup(model: str, output: Path, overrides: list[str]) -> tuple[Any, Any, Any]:
    from prefalign.run_setup import setup_run
    from prefalign.trainer import run_module

    cfg = train_config([f"model={model}", *overrides], output)
    run = setup_run(cfg, write_files=False)
    policy = run.load_model()
    run.attach_reference(policy)
    module = run_module(cfg, policy, run.loss, run.logp_settings)
    policy.train()
    return cfg, run, module


def time_steps(module: Any, batches: list[dict[str, Any]], ghost: Any, optimizer: torch.optim.Optimizer) -> list[float]:
    """Seconds of each training step over ``batches``; with ``ghost`` the in-run IF is collected in each."""
    times = []
    for batch in batches:
        sync()
        start = time.perf_counter()
        if ghost is None:
            module(batch)[0].losses.mean().backward()
        else:
            ghost.pass_influence(
                lambda: module(batch)[0].losses, lambda losses: losses.mean().backward(), len(batch["pair_ids"]), module.device
            )
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync()
        times.append(time.perf_counter() - start)
    return times


def bench_steps(model: str, steps: int, check_pairs: int, overrides: list[str]) -> dict[str, Any]:
    import dataclasses

    from prefalign.inrun.ghost import GhostInfluence, mean_gradient, select_parameters
    from prefalign.reference import move_to
    from prefalign.scoring.base import ScoringContext
    from prefalign.scoring.influence import InfluenceScorer

    with tempfile.TemporaryDirectory() as tmp:
        cfg, run, module = setup(model, Path(tmp), overrides)
        policy = module.policy
        device = run.device
        datamodule = run.datamodule
        result: dict[str, Any] = {"model": model, "pairs_per_step": datamodule.batch_size}

        # exactness first, at the initial weights: the scorer's v and JVP, then the ghost products with that v
        if check_pairs:
            context = ScoringContext(policy, "initial", run.loss, datamodule, run.source, Path(tmp), Path(tmp), run.logp_settings)
            scorer = InfluenceScorer()
            start = time.perf_counter()
            scorer.prepare(context)
            result["scorer_v_s"] = round(time.perf_counter() - start, 2)
            chosen = select_parameters(policy)
            ghost = GhostInfluence(policy, chosen)
            ghost.attach()
            ghost.set_direction({name: scorer._direction["module.policy." + name] for name in chosen})
            module.logp_settings = dataclasses.replace(run.logp_settings, tracer=ghost)
            loader = datamodule.loader(datamodule.datasets["train"], datamodule.batch_size, shuffle=False)
            errors, done = [], 0
            for batch in loader:
                if done >= check_pairs:
                    break
                batch = move_to(batch, device)
                expected = scorer.score_batch(context, batch, {}).double()
                actual = ghost.pass_influence(
                    lambda: module(batch)[0].losses, lambda losses: losses.mean().backward(), len(batch["pair_ids"]), device
                )
                policy.zero_grad(set_to_none=True)
                errors.extend(((actual - expected).abs() / expected.abs()).cpu().tolist())
                done += len(batch["pair_ids"])
            scorer.release()
            result["check"] = {
                "pairs": done,
                "max_relative_difference": max(errors),
                "median_relative_difference": statistics.median(errors),
            }
            print(f"exactness on {done} pairs ({model}, float32): max relative difference {max(errors):.2e}, "
                  f"median {statistics.median(errors):.2e}", flush=True)
        else:
            chosen = select_parameters(policy)
            ghost = GhostInfluence(policy, chosen)
            ghost.attach()
            module.logp_settings = dataclasses.replace(run.logp_settings, tracer=ghost)

        # one refresh of v as the callback computes it (all validation pairs, eval mode)
        policy.eval()
        start = time.perf_counter()
        total = len(datamodule.datasets["val"])
        direction = mean_gradient(
            policy, list(chosen), lambda batch: module(move_to(batch, device))[0].losses, datamodule.eval_loader("val"), total
        )
        sync()
        result["refresh_s"] = round(time.perf_counter() - start, 2)
        result["val_pairs"] = total
        ghost.set_direction(direction)
        policy.train()
        print(f"refresh of v on {total} validation pairs: {result['refresh_s']:.1f} s", flush=True)

        # the steps, alternating plain and collected in blocks
        optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-6)
        batches = []
        for batch in datamodule.train_dataloader():
            batches.append(move_to(batch, device))
            if len(batches) == steps:
                break
        time_steps(module, batches[:1], None, optimizer)  # warm-up of the allocator and kernels, not timed
        plain, collected = [], []
        block = max(1, steps // 4)
        for first in range(0, len(batches), block):
            part = batches[first : first + block]
            plain += time_steps(module, part, None, optimizer)
            collected += time_steps(module, part, ghost, optimizer)
        ghost.detach()
        epoch_steps = len(datamodule.train_dataloader())
        plain_step, ghost_step = statistics.median(plain), statistics.median(collected)
        result.update(
            {
                "steps_timed": len(plain),
                "plain_step_s": round(plain_step, 3),
                "inrun_step_s": round(ghost_step, 3),
                "ratio_without_refresh": round(ghost_step / plain_step, 3),
                "epoch_steps": epoch_steps,
                "ratio_one_epoch_with_refresh": round((epoch_steps * ghost_step + result["refresh_s"]) / (epoch_steps * plain_step), 3),
            }
        )
        print(
            f"training step ({datamodule.batch_size} pairs, median of {len(plain)}): plain {plain_step:.3f} s, with in-run "
            f"influence {ghost_step:.3f} s: {ghost_step / plain_step:.3f}x without refreshes; a one-epoch run of "
            f"{epoch_steps} steps with one refresh: {result['ratio_one_epoch_with_refresh']:.3f}x",
            flush=True,
        )
        return result


def pipeline_run(pairs: int, scores_from: str, work: Path) -> dict[str, float]:
    """One pipeline in a process of its own, in a cache of its own that holds only the converted model: its wall
    and CPU time (:func:`bench.common.timed_run`)."""
    run = work / f"run-{scores_from}-{pairs}"
    # a run cut short is started again from nothing: its wall time must be the whole pipeline's
    shutil.rmtree(run, ignore_errors=True)
    cache = converted_model_cache(work / f"cache-{scores_from}-{pairs}")
    return timed_run([
        sys.executable, "train.py", "select=tif", f"data.max_train_pairs={pairs}", f"pipeline.scores_from={scores_from}",
        f"paths.cache_dir={cache}", f"hydra.run.dir={run}",
    ])


def bench_pipeline(sizes: list[int], work: Path) -> dict[str, Any]:
    """Each size's two pipelines, one after the other; the finished ones' times are kept in ``<work>/times.json``,
    so that a rerun with the same ``--work`` only runs what is missing. The ratios are of wall times and, where
    both runs recorded it, of CPU times (a bare number in ``times.json`` is a wall time: an older record)."""
    record = work / "times.json"
    done = json.loads(record.read_text()) if record.exists() else {}
    results = {}
    for pairs in sizes:
        times = {}
        for scores_from in ("scoring", "warmup"):
            name = f"{pairs}-{scores_from}"
            if name not in done:
                done[name] = pipeline_run(pairs, scores_from, work)
                write_json(done, record)
            entry = done[name] if isinstance(done[name], dict) else {"wall_s": done[name], "cpu_s": None}
            times[scores_from] = entry
            print(f"pipeline select=tif, {pairs} pairs, scores_from={scores_from}: {entry['wall_s']:.0f} s wall, "
                  f"{entry['cpu_s'] if entry['cpu_s'] is not None else 'unrecorded'} s CPU", flush=True)
        cpu = [times[side]["cpu_s"] for side in ("warmup", "scoring")]
        times["ratio_wall"] = round(times["warmup"]["wall_s"] / times["scoring"]["wall_s"], 3)
        times["ratio_cpu"] = round(cpu[0] / cpu[1], 3) if None not in cpu else None
        print(f"  {pairs} pairs: scores_from=warmup takes {times['ratio_wall']:.3f}x the wall time "
              f"(CPU time: {times['ratio_cpu']}x) of warm-up + scoring pass", flush=True)
        results[str(pairs)] = times
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2_135m")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--check-pairs", type=int, default=64)
    parser.add_argument("--pipeline", type=int, action="append", default=[], help="pipeline sizes to compare (pairs)")
    parser.add_argument("--work", default=None, help="where the pipeline runs go (default: a temporary folder); "
                        "the same folder again runs only what did not finish")
    parser.add_argument("--overrides", nargs="*", default=[], help="train config overrides (e.g. trainer=gpu)")
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.steps:
        result = bench_steps(args.model, args.steps, args.check_pairs, args.overrides)
        settings = {"model": args.model, "steps": args.steps, "check_pairs": args.check_pairs, "overrides": args.overrides}
        append_result("In-run influence: the cost of a training step and of a refresh of v",
                      "python -m bench.inrun " + " ".join(sys.argv[1:]), settings, "```\n" + json.dumps(result, indent=1) + "\n```", machine())
    if args.pipeline:
        work = Path(args.work or tempfile.mkdtemp(prefix="bench-inrun-"))
        results = bench_pipeline(args.pipeline, work)
        table = (
            "| pairs | warm-up + scoring pass: wall / CPU (s) | scores_from=warmup: wall / CPU (s) | ratio wall | ratio CPU |\n"
            "| --- | --- | --- | --- | --- |\n"
        ) + "\n".join(
            f"| {pairs} | {row['scoring']['wall_s']} / {row['scoring']['cpu_s']} | {row['warmup']['wall_s']} / "
            f"{row['warmup']['cpu_s']} | {row['ratio_wall']} | {row['ratio_cpu']} |"
            for pairs, row in results.items()
        )
        append_result("In-run influence: the selection pipeline (select=tif) with scores_from=warmup vs scoring",
                      "python -m bench.inrun " + " ".join(sys.argv[1:]), {"sizes": args.pipeline}, table, machine())


if __name__ == "__main__":
    main()
