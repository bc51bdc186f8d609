"""evaluate.py end to end with tiny models: the verifier, the OpenAI-compatible judge over loopback HTTP, a tiny
reward model, the sweep table, and bad input.

The commands run in-process (:func:`tests.entry.run_cli`, as the command line runs them); only the evaluation by two
processes is a real ``torchrun``. The tiny sweep is trained once per module, and its Full Data run is the tiny run
of the tests of one policy: a test that evaluates a run (which writes into its ``eval/``) and needs that folder to
itself works on a copy.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from prefalign.scoring.base import read_scores
from tests.entry import CliResult, run_cli
from tests.evaluation.judge_server import JudgeServer
from tests.test_cli import QUICK, ROOT, check

# 12 prompts (the counts below follow from it) with short answers: the tiny random model's answers are noise anyway
FEW = ["bench.limit=12", "bench.max_new_tokens=8", "generation.batch_size=12", "generation.bootstrap_resamples=200"]


def evaluate(*args: str) -> CliResult:
    """``python evaluate.py <args>``, in this process."""
    return run_cli("evaluate", *args)


def copy_run(run: Path, to: Path) -> Path:
    """A copy of a run or a sweep without its evaluations (``eval/``, a sweep's tables) and checkpoints, which evaluating
    does not read."""
    shutil.copytree(run, to, ignore=shutil.ignore_patterns("eval", "checkpoints", "results*", "winrate_vs_ratio.png"))
    return to


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory):
    """Three runs of the tiny model in one multirun: Full Data, Random and LossDiff-IRM at half the pairs."""
    sweep = tmp_path_factory.mktemp("sweep") / "sweep"
    check(run_cli("train", "-m", "model=tiny_llama", *QUICK, "select=full,random,lossdiff_irm", "select.keep_fraction=0.5",
                  f"hydra.sweep.dir={sweep}"))
    return sweep


def sweep_runs(sweep: Path) -> list[Path]:
    """The run folders of a sweep, in job order."""
    return sorted(path for path in sweep.iterdir() if (path / "metrics.json").exists())


@pytest.fixture(scope="module")
def tiny_run(tiny_sweep, tmp_path_factory):
    """The sweep's Full Data run on its own: a run of the tiny model on all its pairs."""
    return copy_run(sweep_runs(tiny_sweep)[0], tmp_path_factory.mktemp("run") / "tiny")


def test_verifier_evaluation_writes_traceable_results(tiny_run, tmp_path):
    result = evaluate(f"policy={tiny_run}", *FEW, f"hydra.run.dir={tmp_path / 'e'}")
    assert result.returncode == 0, result.stderr[-3000:]
    (folder,) = (tiny_run / "eval").glob("builtin-verifier-T0.7-s0-*")
    report = json.loads((folder / "eval.json").read_text())
    assert report["items"] == 12 and report["winrate"]["n"] == 12
    for key in ("single", "winrate", "lc_winrate_approx", "heldout", "generation"):
        assert key in report
    assert report["generation"]["temperature"] == 0.7
    # the built-in prompts have no difficulty term: prefalign's approximation, under its own key and label
    assert "lc_winrate" not in report and "prefalign's approximation" in report["lc_winrate_approx"]["label"]
    assert 1 <= report["single"]["policy"]["value"] <= 10
    assert report["single"]["policy"]["ci_low"] <= report["single"]["policy"]["value"] <= report["single"]["policy"]["ci_high"]
    assert set(report["heldout"]) == {"rewards/accuracies", "rewards/margins", "loss"}
    assert report["heldout"]["loss"]["n"] == 8
    lines = [json.loads(line) for line in (folder / "generations.jsonl").read_text().splitlines()]
    assert len(lines) == 12 and all({"policy_answer", "baseline_answer", "outcome_for_policy"} <= set(l) for l in lines)
    # the WinRate is exactly the mean of the per-prompt outcomes written next to the answers
    assert report["winrate"]["value"] == pytest.approx(100 * sum(l["outcome_for_policy"] for l in lines) / 12)
    assert "WinRate vs baseline" in (folder / "eval.md").read_text()


def test_openai_judge_end_to_end_with_caching(tiny_run, tmp_path):
    cache = tmp_path / "cache"
    with JudgeServer(fail_first=1) as server:
        args = [f"policy={tiny_run}", "judge=openai", f"judge.client.base_url={server.base_url}",
                "judge.client.backoff=0.01", f"paths.cache_dir={cache}", *FEW]
        first = evaluate(*args, f"hydra.run.dir={tmp_path / 'a'}")
        assert first.returncode == 0, first.stderr[-3000:]
        sent = server.requests
        assert sent == 1 + 12 * 2 + 12 * 2  # one failure retried, single for both models, pairwise in both orders
        # overwrite=true: the evaluation runs again instead of reusing eval.json, and asks no judge twice
        second = evaluate(*args, "overwrite=true", f"hydra.run.dir={tmp_path / 'b'}")
        assert second.returncode == 0, second.stderr[-3000:]
        assert "already evaluated" not in second.stdout + second.stderr
        assert server.requests == sent  # everything came from the reply cache
    (folder,) = (tiny_run / "eval").glob("builtin-openai-*")
    report = json.loads((folder / "eval.json").read_text())
    # the tiny model never writes GOOD: the server rates 2 and always answers [[A]], which both orders cancel
    assert report["single"]["policy"]["value"] == 2.0
    assert report["winrate"]["value"] == 50.0 and report["winrate"]["ties"] == 12
    assert report["unparsable_replies"] == {}


def strict_json(text: str) -> object:
    """``json.loads`` that refuses ``NaN`` and ``Infinity`` (not JSON, though Python writes them by default)."""

    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} in a JSON file")

    return json.loads(text, parse_constant=refuse)


def test_unparsable_judge_replies_are_counted_limited_and_asked_again(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path / "run")  # this test's result folder is the only one of the openai judge
    replies = 12 * 2 + 12 * 2  # single for both models, pairwise in both orders
    with JudgeServer(faults=["unparsable"] * replies) as server:
        args = [f"policy={run}", "judge=openai", f"judge.client.base_url={server.base_url}",
                f"paths.cache_dir={tmp_path / 'cache'}", "overwrite=true", *FEW]
        # every reply unparsable, and allowed to be: eval.json is strict JSON, with null where there is no value
        allowed = evaluate(*args, "judge.max_unparsable=1", f"hydra.run.dir={tmp_path / 'a'}")
        assert allowed.returncode == 0, allowed.stderr[-3000:]
        assert server.requests == replies
        (folder,) = (run / "eval").glob("builtin-openai-*")
        report = strict_json((folder / "eval.json").read_text())
        assert report["judge_replies"] == {"total": replies, "unparsable": replies, "max_unparsable": 1}
        assert report["single"]["policy"]["value"] is None and report["winrate"]["value"] is None
        assert report["lc_winrate_approx"]["value"] is None and report["winrate"]["unparsable"] == 12
        for line in (folder / "generations.jsonl").read_text().splitlines():
            assert strict_json(line)["outcome_for_policy"] is None
        # none was cached: all are asked again; 6 of them unparsable is more than the default limit of 5 %
        server.faults.extend(["unparsable"] * 6)
        failed = evaluate(*args, f"hydra.run.dir={tmp_path / 'b'}")
        assert failed.returncode != 0
        expected = "6 of 48 judge replies (12.5%) could not be parsed, more than judge.max_unparsable=0.05"
        assert expected in failed.stderr, failed.stderr[-3000:]
        assert server.requests == 2 * replies
        # the failed evaluation did not write eval.json: the first one's is still there
        assert strict_json((folder / "eval.json").read_text())["judge_replies"]["unparsable"] == replies
        # the server is fixed: a rerun asks again for exactly the 6 unparsable replies and gets good ones
        fixed = evaluate(*args, f"hydra.run.dir={tmp_path / 'c'}")
        assert fixed.returncode == 0, fixed.stderr[-3000:]
        assert server.requests == 2 * replies + 6
    report = strict_json((folder / "eval.json").read_text())
    assert report["judge_replies"] == {"total": replies, "unparsable": 0, "max_unparsable": 0.05}
    assert report["single"]["policy"]["value"] == 2.0 and report["winrate"]["value"] == 50.0


def test_reward_model_judge_and_scorer(tiny_run, tiny_reward_model, tmp_path):
    result = evaluate(f"policy={tiny_run}", "judge=reward_model", f"judge.model={tiny_reward_model}", "judge.dtype=float32",
                      *FEW, f"hydra.run.dir={tmp_path / 'e'}")
    assert result.returncode == 0, result.stderr[-3000:]
    (folder,) = (tiny_run / "eval").glob("builtin-reward_model-*")
    report = json.loads((folder / "eval.json").read_text())
    assert report["winrate"]["n"] == 12
    scored = tmp_path / "scored"
    result = run_cli("score", "model=tiny_llama", "data.max_train_pairs=16", "data.max_val_pairs=8", "scores=[reward_model]",
                     f"+scorers.reward_model.model={tiny_reward_model}", "+scorers.reward_model.dtype=float32",
                     f"hydra.run.dir={scored}")
    assert result.returncode == 0, result.stderr[-3000:]
    scores, _ = read_scores(scored)
    assert len(scores) == 16 and scores["reward_model"].abs().sum() > 0


def test_sweep_table_from_a_tiny_multirun(tiny_sweep, tmp_path):
    sweep = copy_run(tiny_sweep, tmp_path / "sweep")
    result = evaluate(f"sweep={sweep}", *FEW, f"hydra.run.dir={tmp_path / 'e'}")
    assert result.returncode == 0, result.stderr[-3000:]
    table = (sweep / "results.md").read_text()
    for method in ("| Full Data | 100% |", "| Random | 50% |", "| LossDiff-IRM |", "| SFT |"):
        assert method in table, table
    assert "**" in table  # the best value of each column in bold
    wide = pd.read_csv(sweep / "results.csv")
    assert len(wide) == 3 and {"builtin_single", "builtin_winrate"} <= set(wide.columns)
    assert (sweep / "winrate_vs_ratio.png").stat().st_size > 1000
    # every run against Full Data on the same prompts and validation pairs (per-pair values in heldout.csv)
    assert "against Full Data, paired over the same items" in table and "| Full Data | 24 |" in table
    paired = pd.read_csv(sweep / "results_paired.csv")
    assert len(paired) == 3 and paired["val accuracy vs full"].iloc[0] == "baseline"
    assert all(str(value).startswith(("+", "-")) for value in paired["val accuracy vs full"].iloc[1:])
    heldout = list(sweep.glob("*/eval/*/heldout.csv"))
    assert len(heldout) == 3 and all(len(pd.read_csv(path)) == 8 for path in heldout)
    # a second call reuses the evaluations it finds
    again = evaluate(f"sweep={sweep}", *FEW, f"hydra.run.dir={tmp_path / 'f'}")
    assert again.returncode == 0 and (again.stdout + again.stderr).count("already evaluated") == 3


def test_bad_input_is_named(tiny_run, tmp_path):
    empty = tmp_path / "no_weights"
    empty.mkdir()
    (empty / "config.json").write_text((tiny_run / "policy" / "config.json").read_text())
    result = evaluate(f"policy={empty}", f"baseline={tiny_run}/policy", *FEW, f"hydra.run.dir={tmp_path / 'a'}")
    assert result.returncode != 0 and f"{empty} has a config.json but no weights" in result.stderr
    bench = tmp_path / "bench.jsonl"
    bench.write_text('{"instruction": "Say hi", "dataset": "x"}\n{"question": "no instruction here", "dataset": "x"}\n')
    result = evaluate(f"policy={tiny_run}", "bench=alpaca_eval", f"bench.path={bench}", *FEW, f"hydra.run.dir={tmp_path / 'b'}")
    assert result.returncode != 0 and f"{bench}:2: missing key 'instruction'" in result.stderr


def test_greedy_and_sampled_evaluations_keep_their_own_folders_and_columns(tiny_sweep, tmp_path):
    sweep = copy_run(tiny_sweep, tmp_path / "sweep")
    shutil.rmtree(sweep_runs(sweep)[-1])  # Full Data and Random are enough here
    runs = sweep_runs(sweep)
    greedy = evaluate(f"sweep={sweep}", "generation=greedy", *FEW, f"hydra.run.dir={tmp_path / 'g'}")
    assert greedy.returncode == 0, greedy.stderr[-3000:]
    sampled = evaluate(f"sweep={sweep}", *FEW, "generation.samples=2", f"hydra.run.dir={tmp_path / 's'}")
    assert sampled.returncode == 0, sampled.stderr[-3000:]
    # the second call evaluated again (other settings) instead of reusing the greedy results
    assert "already evaluated" not in sampled.stdout + sampled.stderr
    assert len(runs) == 2
    for run in runs:
        folders = sorted(path.name for path in (run / "eval").iterdir())
        assert len(folders) == 2 and folders[0].startswith("builtin-verifier-T0.7-s0-") and folders[1].startswith("builtin-verifier-greedy-")
        reports = [json.loads((run / "eval" / name / "eval.json").read_text()) for name in folders]
        assert [r["generation"]["temperature"] for r in reports] == [0.7, 0.0]
        # two answers per prompt: the Single of n is the mean of the per-prompt means of both answers' scores
        lines = [json.loads(line) for line in (run / "eval" / folders[0] / "generations.jsonl").read_text().splitlines()]
        assert all(len(line["policy_samples"]) == 1 == len(line["single_policy_samples"]) for line in lines)
        means = [(line["single_policy"] + line["single_policy_samples"][0]) / 2 for line in lines]
        assert reports[0]["single_of_n"]["samples"] == 2 and "single_of_n" not in reports[1]
        assert reports[0]["single_of_n"]["policy"]["value"] == pytest.approx(sum(means) / len(means))
    table = (sweep / "results.md").read_text()
    assert "builtin (verifier, greedy) WinRate" in table and "builtin (verifier, T0.7-s0) WinRate" in table
    wide = pd.read_csv(sweep / "results.csv")
    assert {"builtin (verifier, greedy)_winrate", "builtin (verifier, T0.7-s0)_winrate"} <= set(wide.columns)
    # with the same settings again, every run is reused
    again = evaluate(f"sweep={sweep}", "generation=greedy", *FEW, f"hydra.run.dir={tmp_path / 'h'}")
    assert again.returncode == 0 and (again.stdout + again.stderr).count("already evaluated") == len(runs)


def test_two_processes_evaluate_like_one_and_ask_the_judge_once(tiny_run, tmp_path):
    # each rank generates every other batch of 4 prompts; rank 0 alone asks the judge and writes the results
    runs = {name: copy_run(tiny_run, tmp_path / name) for name in ("one", "two")}
    reports, requests = {}, {}
    for name, run in runs.items():
        with JudgeServer() as server:
            args = [f"policy={run}", "judge=openai", f"judge.client.base_url={server.base_url}", "bench.limit=12",
                    "bench.max_new_tokens=8", "generation.batch_size=4", "generation.bootstrap_resamples=200",
                    f"paths.cache_dir={tmp_path / name}", f"hydra.run.dir={tmp_path / ('e_' + name)}"]
            if name == "one":
                # one thread, as torchrun gives each of its processes (OMP_NUM_THREADS=1): the same float sums
                threads = torch.get_num_threads()
                torch.set_num_threads(1)
                try:
                    result = evaluate(*args)
                finally:
                    torch.set_num_threads(threads)
            else:
                result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                                         "evaluate.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=900,
                                        env={**os.environ, "OMP_NUM_THREADS": "1"})
            assert result.returncode == 0, result.stderr[-3000:]
            requests[name] = server.requests
        (folder,) = (run / "eval").glob("builtin-openai-*")
        reports[name] = json.loads((folder / "eval.json").read_text())
        reports[name]["answers"] = [json.loads(line)["policy_answer"] for line in (folder / "generations.jsonl").open()]
    assert requests["one"] == requests["two"] == 12 * 2 + 12 * 2  # not once per rank
    one, two = reports["one"], reports["two"]
    assert one["answers"] == two["answers"]
    for key in ("single", "winrate", "lc_winrate_approx", "heldout"):
        assert one[key] == two[key], key
