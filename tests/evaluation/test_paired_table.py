"""The sweep's paired table against Full Data, and the n-sample setting, on files written by hand."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from prefalign.evaluation.policy import check_samples, result_folder, sample_seed
from prefalign.evaluation.tables import build_tables, item_values


def write_run(root, name, rule, kept, singles, accuracies, samples=None, seed=None):
    run = root / name
    folder = run / "eval" / "builtin-verifier-T0.7-s0-abcd1234"
    folder.mkdir(parents=True)
    if seed is not None:
        (run / "config.yaml").write_text(f"seed: {seed}\n")
    selection = None if rule == "full" else {"rule": rule, "kept_count": kept, "kept_fraction": kept / 8, "scores": []}
    metrics = {"run": {"model": "tiny", "loss": "DPOLoss", "train_pairs": kept, "elapsed_s": 12.0}, "selection": selection}
    (run / "metrics.json").write_text(json.dumps(metrics))
    point = {"value": 5.0, "ci_low": 4.0, "ci_high": 6.0, "n": 4}
    report = {"benchmark": "builtin", "judge": "verifier", "setting": "T0.7-s0",
              "single": {"policy": point, "baseline": point}, "winrate": {**point, "value": 50.0}}
    (folder / "eval.json").write_text(json.dumps(report))
    with open(folder / "generations.jsonl", "w") as stream:
        for index, single in enumerate(singles):
            line = {"item_id": f"i{index}", "single_policy": single}
            if samples is not None:
                line["single_policy_samples"] = [samples[index]]
            stream.write(json.dumps(line) + "\n")
    rows = "\n".join(f"p{index},{accuracy},0.1,0.6" for index, accuracy in enumerate(accuracies))
    (folder / "heldout.csv").write_text("pair_id,rewards/accuracies,rewards/margins,loss\n" + rows + "\n")


def test_every_run_is_compared_with_full_data_item_by_item(tmp_path):
    # Full Data: success 100, 0, 0, 100 (Single 10 = correct, 1 = wrong) -> 50%; held-out accuracy 1, 0, 1, 1 -> 75%
    write_run(tmp_path, "0_full", "full", 8, [10, 1, 1, 10], [1, 0, 1, 1])
    # the rule: first answers 10, 10, 1, 10 and second samples 10, 1, 1, 10 -> per prompt 100, 50, 0, 100 -> 62.5%,
    # i.e. +12.5 points, one prompt better and none worse; accuracy 1, 1, 1, 0 -> 75%, +0.0, one pair each way
    write_run(tmp_path, "1_random", "random", 4, [10, 10, 1, 10], [1, 1, 1, 0], samples=[10, 1, 1, 10])
    assert item_values(tmp_path / "1_random/eval/builtin-verifier-T0.7-s0-abcd1234", "verifier").tolist() == [100, 50, 0, 100]
    paths = build_tables(tmp_path)
    table = paths["markdown"].read_text()
    assert "against Full Data, paired over the same items" in table
    full_row = next(line for line in table.splitlines() if line.startswith("| Full Data | 8 |"))
    assert "50.0 [" in full_row and "baseline" in full_row and "75.0 [" in full_row
    rule_row = next(line for line in table.splitlines() if line.startswith("| Random | 4 |"))
    cells = [cell.strip() for cell in rule_row.strip("|").split("|")]
    assert cells[2] == "-"  # no recorded seed
    assert cells[3].startswith("62.5 [") and cells[4].startswith("+12.5 [") and cells[5] == "1 / 0"
    assert cells[6].startswith("75.0 [") and cells[7].startswith("+0.0 [") and cells[8] == "1 / 1" and cells[9] == "12"
    paired = __import__("pandas").read_csv(paths["paired_csv"])
    assert list(paired["method"]) == ["Full Data", "Random"]


def test_the_runs_of_a_method_over_seeds_make_one_row_paired_on_seeds_and_items(tmp_path):
    # Full Data at seeds 0 and 1: success 100, 0, 0, 100 and 100, 100, 0, 0 -> 50% each, 50% over both
    write_run(tmp_path, "0_full_s0", "full", 8, [10, 1, 1, 10], [1, 0, 1, 1], seed=0)
    write_run(tmp_path, "1_full_s1", "full", 8, [10, 10, 1, 1], [1, 1, 0, 1], seed=1)
    # the rule at seeds 0 and 1: 100, 100, 0, 100 (75%) and 100, 100, 100, 0 (75%): +25 points over both; per
    # prompt over the seeds 100, 100, 50, 50 against Full Data's 100, 50, 0, 50 -> two prompts better, none worse
    write_run(tmp_path, "2_random_s0", "random", 4, [10, 10, 1, 10], [1, 1, 1, 1], seed=0)
    write_run(tmp_path, "3_random_s1", "random", 4, [10, 10, 10, 1], [1, 1, 1, 1], seed=1)
    table = build_tables(tmp_path)["markdown"].read_text()
    assert "paired over the same items and training seeds" in table
    full_row = next(line for line in table.splitlines() if line.startswith("| Full Data | 8 |"))
    assert "| 0,1 | 50.0 [" in full_row and "baseline" in full_row
    cells = [cell.strip() for cell in next(line for line in table.splitlines() if line.startswith("| Random | 4 |")).strip("|").split("|")]
    assert cells[2] == "0,1" and cells[3].startswith("75.0 [") and cells[4].startswith("+25.0 [") and cells[5] == "2 / 0"
    # held-out accuracy: 100% against 75% at each seed
    assert cells[6].startswith("100.0 [") and cells[7].startswith("+25.0 [")
    low, high = (float(x) for x in cells[4].split("[")[1].rstrip("]").split(","))
    assert low <= 25.0 <= high
    paired = __import__("pandas").read_csv(tmp_path / "results_paired.csv").set_index("method")
    assert paired.loc["Random", "seeds"] == 2 and paired.loc["Random", "items_diff_value"] == 25.0
    assert paired.loc["Random", "items_diff_low"] == low and (tmp_path / "paired_differences.png").stat().st_size > 1000
    # a repeated seed is two runs that would be mixed: named
    write_run(tmp_path, "4_random_s1_again", "random", 4, [10, 10, 10, 1], [1, 1, 1, 1], seed=1)
    with pytest.raises(ValueError, match="with seed 1 in one block"):
        build_tables(tmp_path)


def test_samples_are_checked_and_keep_earlier_result_keys():
    base = OmegaConf.create({"temperature": 0.7, "top_p": 1.0, "seed": 0, "batch_size": 16})
    bench, judge = OmegaConf.create({"name": "builtin"}), OmegaConf.create({"name": "verifier"})
    one = OmegaConf.merge(base, {"samples": 1})
    assert check_samples(one) == 1 and check_samples(OmegaConf.merge(base, {"samples": 4})) == 4
    # samples=1 is the old behaviour, so its results keep the folder they had before the setting existed
    assert result_folder(bench, judge, one) == result_folder(bench, judge, base)
    assert result_folder(bench, judge, OmegaConf.merge(base, {"samples": 2})) != result_folder(bench, judge, base)
    for bad in (0, True, 1.5):
        with pytest.raises(ValueError, match="generation.samples must be a whole number"):
            check_samples(OmegaConf.merge(base, {"samples": bad}))
    with pytest.raises(ValueError, match="greedy decoding"):
        check_samples(OmegaConf.merge(base, {"samples": 2, "temperature": 0.0}))
    assert sample_seed(5, 0) == 5 and sample_seed(5, 2) == 5 + 2 * 1_000_003
