"""The benchmark scripts' own machinery: kronfluence's influence against prefalign's, the LESS-style projection,
and the GPU run (its steps, caps and results file, end to end on the tiny model). No timings are checked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from bench import gpu
from bench.influence_peers import tif_kept
from tests.entry import run_cli
from tests.test_pipeline import TOKENIZER

ROOT = Path(__file__).resolve().parents[1]


def test_tif_kept_is_the_strict_percentile_band():
    ids = [f"p{i}" for i in range(20)]
    kept = tif_kept(ids, torch.arange(20, dtype=torch.float64))
    # 10th percentile 1.9, 90th 17.1: strictly inside keeps 2..17
    assert kept == [f"p{i}" for i in range(2, 18)]


def test_gpu_steps_fit_the_budget():
    assert sum(step.estimate_s for step in gpu.STEPS) + 30 <= gpu.BUDGET_S <= 8 * 60
    for step in gpu.STEPS:
        assert step.estimate_s < step.cap_s
        assert "random_qwen3_0_6b" in step.gpu and "tiny_llama" in step.tiny
        assert (ROOT / (step.module.replace(".", "/") + ".py")).exists()
    assert len({step.name for step in gpu.STEPS}) == len(gpu.STEPS)


def test_run_with_cap_kills_the_whole_process_group(tmp_path):
    marker = tmp_path / "child.pid"
    # a step that leaves a child behind (as bench.train's workers are) and hangs
    command = ["bash", "-c", f"sleep 300 & echo $! > {marker}; echo started; wait"]
    returncode, seconds, tail = gpu.run_with_cap(command, cap_s=2, prefix="test")
    assert returncode is None and seconds < 30 and "started" in tail
    child = int(marker.read_text())
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        pytest.fail("the step's child process outlived the cap")


def test_record_appends_the_steps_tables_and_a_summary(tmp_path, monkeypatch):
    import bench.common

    results_md = tmp_path / "RESULTS.md"
    monkeypatch.setattr(bench.common, "RESULTS", results_md)
    block = "## Forward scoring throughput and utilisation (stamp)\n\n| a |\n| --- |\n| 1 |\n\n"
    results = {"mode": "gpu", "stamp": "now", "machine": {"gpu": "NVIDIA H200"}, "budget_s": 470, "total_s": 12.0,
               "steps": [{"name": "scoring", "command": "python -m bench.scoring", "status": "ok", "seconds": 12.0,
                          "cap_s": 110, "note": "", "tables": block},
                         {"name": "train", "command": "python -m bench.train", "status": "skipped", "seconds": 0.0,
                          "cap_s": 5, "note": "5 s of the budget left", "tables": ""}]}
    gpu.record_results(results, "bash bench/gpu.sh")
    text = results_md.read_text()
    assert block in text
    assert "## GPU run: every GPU benchmark (bench/gpu.sh)" in text and "NVIDIA H200" in text
    assert "| train | skipped |" in text


# opt-in (PREFALIGN_GPU_SCRIPT_TEST=1): 2.5 minutes on the quiet 2-core CPU (21 once under load), and it reads TRL when
# installed, which the suite does not install
@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("PREFALIGN_GPU_SCRIPT_TEST") != "1",
                    reason="bash bench/gpu.sh --tiny end to end takes minutes on CPU: set PREFALIGN_GPU_SCRIPT_TEST=1")
def test_gpu_script_runs_every_step_on_the_tiny_model(tmp_path):
    """``bash bench/gpu.sh --tiny`` end to end on the CPU (147 s on the quiet 2-core machine, 21 minutes once under
    load)."""
    out = tmp_path / "gpu_results.json"
    before = (ROOT / "bench" / "RESULTS.md").read_text()
    env = {**os.environ, "PYTHON": sys.executable}
    result = subprocess.run(["bash", "bench/gpu.sh", "--tiny", "--no-record", "--out", str(out)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=3000)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-3000:]
    results = json.loads(out.read_text())
    steps = {step["name"]: step for step in results["steps"]}
    assert list(steps) == [step.name for step in gpu.STEPS]
    assert all(step["status"] == "ok" for step in steps.values())
    assert "Spearman(bf16, fp32)" in steps["influence_precision"]["tables"]
    assert "utilisation_of_peak" in steps["scoring"]["tables"]
    assert "Spearman(JVP, autograd)" in steps["influence"]["tables"]
    assert "pairs_per_s" in steps["train"]["tables"]
    assert "mfu_vs_anchor_22.5%" in steps["strategies"]["tables"] and "trainer=fsdp (FSDP2)" in steps["strategies"]["tables"]
    assert "with in-run influence" in steps["inrun"]["output_tail"]
    # --no-record: the measured tables went to the results file only
    assert (ROOT / "bench" / "RESULTS.md").read_text() == before


@pytest.mark.slow
def test_influence_peers_runs_on_the_tiny_model(monkeypatch, capsys):
    pytest.importorskip("kronfluence")
    from bench import influence_peers

    monkeypatch.setattr(sys, "argv", ["bench/influence_peers.py", "--model", "tiny_llama", "--pairs", "16", "--val-pairs", "8",
                                      "--warmup-pairs", "0", "--methods", "kronfluence", "ekfac", "less", "--no-record"])
    influence_peers.main()
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    header = next(cells(line) for line in lines if line.startswith("| method |"))
    rows = {row[0]: dict(zip(header, row)) for row in map(cells, lines) if len(row) == len(header)}
    for method in ("prefalign JVP, all parameters", "prefalign JVP, nn.Linear", "kronfluence identity", "kronfluence ekfac",
                   "LESS-style, d=8192, inner product", "LESS-style, d=8192, mean cosine"):
        assert method in rows
    # kronfluence's identity scores over the same modules are prefalign's, same sign, same ranking
    assert float(rows["kronfluence identity"]["spearman_vs_exact_same_params"]) > 0.99
    assert float(rows["kronfluence identity"]["max_rel_diff_vs_exact_same_params"]) < 1e-3


def cells(line: str) -> list[str]:
    """The cells of one markdown table row."""
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


SCALE_RECORD = {
    "pairs": 100, "train_tokens": 10_000, "val_pairs": 20, "val_tokens": 2_000,
    "warmup_s": 50.0, "warmup_wall_s": 60.0, "score_s": 40.0, "score_wall_s": 45.0, "score_from_cache": False,
    "timings_s": {"prepare/influence": 4.0, "influence": 10.0, "prepare/lossdiff": 6.0, "prepare/irm": 0.0,
                  "lossdiff": 2.0, "irm": 1.0, "policy_forward": 3.0},
}


def test_scale_stages_split_the_scoring_run_by_what_each_part_grows_with():
    from bench.scale import stages

    split = stages(SCALE_RECORD)
    assert split == {
        "warm-up (1 epoch)": (50.0, "train"),
        "influence: validation gradient": (4.0, "val"),
        "influence: per-pair JVP": (10.0, "train"),
        "LossDiff + IRM: auxiliary model": (6.0, "val"),
        "LossDiff + IRM: per-pair passes": (6.0, "train"),  # 2 + 1 + the shared policy forward 3
        "scoring: loading, reference log-probs, files": (14.0, "train"),  # 40 - (4 + 10 + 6 + 6)
        "process start-up (x2)": (15.0, "fixed"),  # (60 - 50) + (45 - 40)
    }


def test_scale_projection_by_hand():
    from bench.scale import growth, project

    # 10x the parameters; 1,000 pairs x 100 tokens = 10x the training tokens; 40 x 100 = 2x the validation tokens;
    # a device of 100x this CPU's peak
    rows = {row["stage"]: row for row in project(SCALE_RECORD, 1e8, 1e11, 1000, 100.0, 40, 1e9, 1e13)}
    assert "process start-up (x2)" not in rows
    hours = {name: row["this CPU, hours"] * 3600 for name, row in rows.items()}
    assert hours["warm-up (1 epoch)"] == pytest.approx(50 * 10 * 10)
    assert hours["influence: validation gradient"] == pytest.approx(4 * 10 * 2)
    assert hours["influence: per-pair JVP"] == pytest.approx(10 * 10 * 10)
    assert hours["LossDiff + IRM: auxiliary model"] == pytest.approx(6 * 10 * 2)
    assert hours["**total**"] == pytest.approx(5000 + 80 + 1000 + 120 + 600 + 1400)
    assert rows["**total**"]["target device, hours"] * 3600 == pytest.approx(82.0)
    # t ~ n^b: 4x the time for 4x the pairs is linear, 2x is sqrt
    assert growth(10, 40, 100, 400) == pytest.approx(1.0)
    assert growth(10, 20, 100, 400) == pytest.approx(0.5)


def stages_in_this_process(command: list[str], log: Path) -> float:
    """:func:`bench.scale.run_stage` for ``[python, "<script>.py", *overrides]`` with the script's Hydra ``main()`` run
    in this process (:func:`tests.entry.run_cli`): its output into ``log``, a failure stops the script; wall seconds."""
    assert command[0] == sys.executable and command[1].endswith(".py"), command
    start = time.perf_counter()
    result = run_cli(command[1].removesuffix(".py"), *command[2:])
    seconds = time.perf_counter() - start
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(result.stdout + result.stderr)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stderr[-5000:]}"
    return seconds


def test_scale_runs_the_stages_on_the_tiny_model_and_resumes(tmp_path, monkeypatch, capsys):
    import bench.scale

    # the stages' commands run in this process (each would otherwise pay an interpreter and torch's imports); the
    # stage runner itself is tested below. This CPU's matmul peak is a timing, which no test checks: a fixed one
    # (measuring it takes about 10 s of 2048 x 2048 products)
    monkeypatch.setattr(bench.scale, "run_stage", stages_in_this_process)
    monkeypatch.setattr(bench.scale, "matmul_peak", lambda: 123.4e9)
    argv = ["bench/scale.py", "--sizes", "8", "16", "--out", str(tmp_path), "--no-record",
            "--", "model=tiny_llama", "data.max_val_pairs=4", f"paths.cache_dir={tmp_path / 'cache'}", TOKENIZER]
    monkeypatch.setattr(sys, "argv", argv)
    bench.scale.main()
    output = capsys.readouterr().out
    for n in (8, 16):
        record = json.loads((tmp_path / str(n) / "timings.json").read_text())
        assert record["pairs"] == n and record["val_pairs"] == 4 and not record["score_from_cache"]
        assert record["train_tokens"] > 0 and 0 < record["warmup_s"] < record["warmup_wall_s"]
        assert {"prepare/influence", "influence", "prepare/lossdiff", "lossdiff", "irm"} <= set(record["timings_s"])
    lines = [line for line in output.splitlines() if line.startswith("| ")]
    assert any(line.startswith("| influence: per-pair JVP | train pairs |") for line in lines)
    assert any(line.startswith("| **total** |") for line in lines)
    assert "(123.4 GFLOP/s float32, measured now)" in output  # the projection is relative to the peak
    # a second run reads every size back instead of running it again
    monkeypatch.setattr(bench.scale, "run_stage", lambda command, log: pytest.fail(f"ran {command} again"))
    bench.scale.main()
    assert capsys.readouterr().out.count("read back from") == 2


def test_scale_stage_runner_logs_the_output_and_stops_on_a_failure(tmp_path):
    from bench.scale import run_stage

    seconds = run_stage([sys.executable, "-c", "import sys; print('to stdout'); print('to stderr', file=sys.stderr)"],
                        tmp_path / "logs" / "ok.log")
    assert seconds > 0 and (tmp_path / "logs" / "ok.log").read_text().split() == ["to", "stdout", "to", "stderr"]
    with pytest.raises(SystemExit, match=r"failed \(exit 3\); its output: .*failed.log"):
        run_stage([sys.executable, "-c", "raise SystemExit(3)"], tmp_path / "failed.log")


def test_online_table_counts_the_ground_truth_of_the_pairs_a_step_trained_on(tmp_path):
    from bench.online import kept_noise

    rows = [("a", True, False), ("b", False, True), ("c", False, True), ("d", False, False)]  # id, flipped, ambiguous
    (tmp_path / "sample").mkdir()
    (tmp_path / "sample" / "pairs.jsonl").write_text("".join(
        json.dumps({"pair_id": pair_id, "prompt": "p", "chosen": "x", "rejected": "y",
                    "metadata": {"chosen_correct": not flipped, "label_flipped": flipped, "ambiguous": ambiguous}}) + "\n"
        for pair_id, flipped, ambiguous in rows))
    assert kept_noise(tmp_path) == "1 / 2"  # no selection: every pair was trained on
    (tmp_path / "train" / "select").mkdir(parents=True)
    (tmp_path / "train" / "select" / "selection.json").write_text(json.dumps({"kept": ["b", "d"]}))
    assert kept_noise(tmp_path) == "0 / 1"
    assert kept_noise(tmp_path / "elsewhere") == "-"  # no pairs file (a Curri-DPO stage)


def test_lds_trains_each_subset_once_and_correlates_every_score(tmp_path, monkeypatch, capsys):
    import bench.lds
    import prefalign.stages.train

    common = ["model=tiny_llama", "data.max_train_pairs=12", "data.max_val_pairs=4", f"paths.cache_dir={tmp_path / 'cache'}",
              TOKENIZER]
    scored, selected = tmp_path / "scored", tmp_path / "selected"
    result = run_cli("score", *common, "scores=[random,annotator]", f"hydra.run.dir={scored}")
    assert result.returncode == 0, result.stderr[-3000:]
    result = run_cli("select", f"scores={scored}", "select=topk", "select.score=annotator", "select.keep_fraction=0.5",
                     f"hydra.run.dir={selected}")
    assert result.returncode == 0, result.stderr[-3000:]
    work = tmp_path / "lds"
    argv = ["bench/lds.py", "--scores", str(scored), "--subsets", "3", "--work", str(work), "--targets", "val", "test_pairs",
            "--test-pairs", "8", "--resamples", "50", "--selection", f"top annotator={selected}", "--no-record",
            "--overrides", *common]
    monkeypatch.setattr(sys, "argv", argv)
    bench.lds.main()
    output = capsys.readouterr().out
    table = pd.read_csv(work / "lds.csv")
    assert sorted(set(table["column"])) == ["annotator", "random"]
    assert sorted(set(table["target"])) == ["test_pairs accuracy", "test_pairs loss", "val accuracy", "val loss"]
    assert table["subsets"].eq(3).all() and table["lds"].between(-1, 1).all()
    subsets = pd.read_csv(work / "subsets.csv")
    assert len(subsets) == 3 and {"predicted/annotator", "measured/val/loss", "measured/test_pairs/accuracy"} <= set(subsets)
    # every subset is 6 of the 12 pairs; the selection was trained too, and placed among them
    runs = sorted((work / "runs").iterdir())
    assert len(runs) == 4 and all((run / "metrics.json").exists() for run in runs)
    kept = [len(json.loads((run / "selection.json").read_text())["kept"]) for run in runs]
    assert kept == [6, 6, 6, 6]
    assert "| top annotator | 6 | val loss |" in output and (work / "lds.png").exists()
    # a second call reads every training and measurement back
    monkeypatch.setattr(prefalign.stages.train, "run_training", lambda cfg: pytest.fail("trained again"))
    bench.lds.main()
    pd.testing.assert_frame_equal(pd.read_csv(work / "lds.csv"), table)


def test_paired_over_seeds_reports_the_seed_spread_the_power_and_a_forest_plot(tmp_path, monkeypatch, capsys):
    import bench.paired
    import prefalign.evaluation.policy

    common = ["model=tiny_llama", "data.max_train_pairs=8", "data.max_val_pairs=6", f"paths.cache_dir={tmp_path / 'cache'}",
              TOKENIZER]
    sweep = tmp_path / "sweep"
    runs: dict[str, list[str]] = {"full": [], "ipo": []}
    for seed in (0, 1):
        for name, extra in (("full", []), ("ipo", ["loss=ipo", "optimizer.lr=1e-2"])):
            folder = sweep / f"{name}_s{seed}"
            result = run_cli("train", *common, *extra, f"seed={seed}", f"hydra.run.dir={folder}")
            assert result.returncode == 0, result.stderr[-3000:]
            runs[name].append(str(folder))
    # each run kept its last validation's per-pair values: what scoring its policy again gives
    from prefalign.evaluation.policy import heldout_values, load_checkpoint, run_config

    for folder in (*runs["full"], *runs["ipo"]):
        kept = json.loads((Path(folder) / "eval" / "heldout-val.json").read_text())["values"]
        cfg = run_config(folder)
        again = heldout_values(cfg, load_checkpoint(folder, cfg.model.dtype)[0].eval(), tmp_path / "cache")
        assert kept["pair_id"] == again["pair_id"] and len(kept["pair_id"]) == 6
        for name in ("rewards/accuracies", "rewards/margins", "loss"):
            assert kept[name] == pytest.approx(again[name], abs=1e-5), name
    plot = tmp_path / "paired.png"
    base = ["bench/paired.py", "--cache-dir", str(tmp_path / "cache"), "--resamples", "50", "--no-record"]
    monkeypatch.setattr(sys, "argv", [*base, "--baseline", ",".join(runs["full"]), ",".join(runs["ipo"]), "--plot", str(plot)])
    # so the comparison scores no policy
    monkeypatch.setattr(bench.paired, "heldout_values", lambda *a, **k: pytest.fail("computed again"))
    bench.paired.main()
    output = capsys.readouterr().out
    # the table's rows (folders of different names: each method is named by its folders)
    rows = [line.split(" | ") for line in output.splitlines() if line.startswith(f"| {runs['full'][0]},")
            or line.startswith(f"| {runs['ipo'][0]},")]
    assert len(rows) == 2
    # both methods over two seeds on the 6 pairs; each seed's mean, their spread, and the design's resolution
    full, other = rows
    assert full[1] == "2" and other[1] == "2" and full[2] == "6"
    seeds_full = [float(v) for v in full[4].split(" (sd")[0].split(" / ")]
    assert len(seeds_full) == 2 and all(0 <= v <= 100 for v in seeds_full)
    assert float(full[3].split(" [")[0]) == pytest.approx(sum(seeds_full) / 2, abs=0.1)
    assert "(sd " in other[4] and float(other[-1].rstrip(" |")) > 0
    assert plot.exists() and plot.stat().st_size > 0
    # a second comparison, here of the whole sweep grouped by method (the loss names the group that is not the
    # baseline's), computes none either and gives the same numbers
    monkeypatch.setattr(sys, "argv", [*base, "--sweep", str(sweep)])
    bench.paired.main()
    by_sweep = capsys.readouterr().out
    assert "| Full Data | 2 | 6 | " + full[3] in by_sweep and "| Full Data (IPO) | 2 | 6 | " + other[3] in by_sweep
    # a changed policy is measured again
    record = Path(runs["full"][0]) / "eval" / "heldout-val.json"
    config = Path(runs["full"][0]) / "policy" / "config.json"
    config.write_text(config.read_text() + "\n")
    monkeypatch.setattr(bench.paired, "heldout_values", prefalign.evaluation.policy.heldout_values)
    before = record.stat().st_mtime_ns
    bench.paired.main()
    assert record.stat().st_mtime_ns > before


def test_noise_runs_every_setting_once_and_flips_add_positives(tmp_path, monkeypatch, capsys):
    import bench.noise

    common = ["model=tiny_llama", "data.max_train_pairs=24", "data.max_val_pairs=4", f"paths.cache_dir={tmp_path / 'cache'}",
              TOKENIZER]
    work = tmp_path / "noise"
    argv = ["bench/noise.py", "--flips", "0", "0.4", "--scores", "random", "annotator", "--work", str(work), "--no-record",
            "--overrides", *common]
    monkeypatch.setattr(sys, "argv", argv)
    bench.noise.main()
    output = capsys.readouterr().out
    table = pd.read_csv(work / "detection.csv")
    assert sorted(set(table["score"])) == ["annotator", "random"] and sorted(set(table["flip_fraction"])) == [0.0, 0.4]
    flipped = table[table["target"] == "label_flipped"].groupby("flip_fraction")["positives"].first()
    # 40% of the pairs not flipped already get flipped: more positives, on the same 24 pairs
    assert flipped[0.4] > flipped[0.0] and table["pairs"].eq(24).all()
    assert (work / "detection.png").exists() and "+0.4 flipped: AUROC" in output
    for flip in ("0", "0.4"):
        assert (work / f"flip_{flip}" / "analysis" / "plots" / "roc_label_flipped.png").exists()
    # a second call reruns no stage
    monkeypatch.setattr(bench.noise, "run_stage", lambda *a, **k: pytest.fail("ran a stage again"))
    bench.noise.main()
    pd.testing.assert_frame_equal(pd.read_csv(work / "detection.csv"), table)


def test_paired_sweep_groups_rows_in_the_papers_order_and_names_the_loss_once(tmp_path):
    from bench.paired import sweep_groups

    def run(folder: str, label: str | None, loss: str, seed: int) -> None:
        path = tmp_path / folder
        path.mkdir()
        selection = {"rule": label.lower(), "label": label} if label else None
        (path / "metrics.json").write_text(json.dumps({"run": {"loss": loss}, "selection": selection}))
        (path / "config.yaml").write_text(f"seed: {seed}\nselect:\n  keep_fraction: 0.67\n")

    # job order puts the robust loss, M_AP and TIF before the oracle; the table reads in the papers' order
    for seed in (0, 1):
        run(f"{4 * seed}_rdpo", None, "rDPOLoss", seed)
        run(f"{4 * seed + 1}_map", "M_AP", "DPOLoss", seed)
        run(f"{4 * seed + 2}_tif", "TIF", "DPOLoss", seed)
        run(f"{4 * seed + 3}_full", None, "DPOLoss", seed)
        run(f"{8 + seed}_oracle", "Oracle (upper bound)", "DPOLoss", seed)
    (base, base_runs), methods = sweep_groups(tmp_path, "DPO")
    assert base == "Full Data" and sorted(path.name for path in base_runs) == ["3_full", "7_full"]
    assert [name for name, _ in methods] == ["Full Data (rDPO)", "Oracle (upper bound)", "TIF", "M_AP"]
    assert all(len(runs) == 2 for _, runs in methods)


def test_a_run_keeps_its_validation_values_only_for_its_final_policy_on_the_pairs_as_loaded(tmp_path):
    from types import SimpleNamespace

    from prefalign.heldout_record import read_values, record_path
    from prefalign.safe_config import load_config
    from prefalign.stages.train import keep_validation_values

    (tmp_path / "policy").mkdir()
    (tmp_path / "policy" / "model.safetensors").write_bytes(b"weights")
    values = {"pair_id": ["a", "b"], "rewards/accuracies": [1.0, 0.0], "loss": [0.5, 0.9]}

    def keep(val_flips: float, world_size: int = 1, validated_at: int = 7) -> Path | None:
        (tmp_path / "config.yaml").write_text(f"data:\n  val_flip_fraction: {val_flips}\nloss:\n  beta: 0.1\nmodel:\n  name: m\n")
        module = SimpleNamespace(last_val_pairs=values, validated_at_step=validated_at)
        return keep_validation_values(module, SimpleNamespace(world_size=world_size, global_step=7), tmp_path)

    assert keep(0.2) is None and not record_path(tmp_path, "val").exists()  # flipped validation labels: not held out
    assert keep(0.0, world_size=2) is None and keep(0.0, validated_at=5) is None  # a part, or an earlier policy
    assert keep(0.0) == record_path(tmp_path, "val")
    cfg = load_config(tmp_path / "config.yaml", keys=("model", "loss", "data"))
    assert read_values(tmp_path, cfg, "val") == values
    (tmp_path / "policy" / "model.safetensors").write_bytes(b"other weights")  # another policy: not its values
    assert read_values(tmp_path, cfg, "val") is None
    record_path(tmp_path, "val").write_text("{not json")
    assert read_values(tmp_path, cfg, "val") is None
