"""The length-controlled win rates: AlpacaEval 2's through the alpaca-eval package, on hand-made annotations with a
hand-made difficulty table in a hub cache (offline: nothing downloads), and prefalign's approximation, labelled as
such, on every other benchmark."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pandas as pd
import pytest
from alpaca_eval.metrics import glm_winrate
from alpaca_eval.metrics.winrate import get_winrate
from hydra.utils import instantiate
from omegaconf import OmegaConf

from prefalign.evaluation.metrics import (
    LC_APPROX_KEY,
    LC_APPROX_LABEL,
    LC_KEY,
    AlpacaEvalLengthControl,
    ApproximateLengthControl,
    JudgedAnswers,
    LengthControlUnavailable,
    alpaca_eval_annotations,
    length_controlled_win_rate,
    reported_length_control,
    win_rate,
)

BENCH_CONF = Path(__file__).resolve().parents[2] / "conf" / "bench"
PROMPTS = 60
COMMIT = "0123456789abcdef0123456789abcdef01234567"  # any 40 hex digits: the hub cache's snapshot name


@pytest.fixture
def offline_hub(tmp_path, monkeypatch) -> Path:
    """An empty hub cache with offline mode on: a file not put there cannot be had, and nothing is downloaded."""
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return cache


@pytest.fixture
def difficulty_table(offline_hub) -> pd.DataFrame:
    """A hand-made ``df_gamed.csv`` in the hub cache's layout, as the package reads it: two gamed baselines' rows
    (``not_gamed_baseline`` false), each over every instruction in order, so that the first row of each ``index``
    sits at that label; the verbose one wins more often with longer answers (``std_delta_len`` is the baseline's
    length minus the model's), as on the real leaderboard."""
    difficulty = np.linspace(-1.5, 1.5, PROMPTS)
    rows = [
        {"model": model, "index": i, "preference": preference, "std_delta_len": std_delta_len,
         "instruction_difficulty": difficulty[i], "not_gamed_baseline": False}
        for model, std_delta_len, preference in (("gamed_verbose", -1.0, 0.75), ("gamed_concise", 1.0, 0.25))
        for i in range(PROMPTS)
    ]
    table = pd.DataFrame(rows)
    repository = offline_hub / "datasets--tatsu-lab--alpaca_eval"
    (repository / "snapshots" / COMMIT).mkdir(parents=True)
    table.to_csv(repository / "snapshots" / COMMIT / "df_gamed.csv", index=False)
    (repository / "refs").mkdir()
    (repository / "refs" / "main").write_text(COMMIT)
    return table


def judged(outcomes: list[float | None], policy_chars: list[int], baseline_chars: list[int]) -> JudgedAnswers:
    """Answers of the given lengths in characters; "é" is two bytes and the token counts run the other way, so a
    length measured in bytes or tokens would differ from the package's."""
    return JudgedAnswers(
        outcomes,
        ["é" * n for n in policy_chars],
        ["b" * n for n in baseline_chars],
        policy_tokens=list(reversed(policy_chars)),
        baseline_tokens=list(baseline_chars),
    )


def sample_outcomes(seed: int = 0) -> tuple[list[float], list[int]]:
    """Outcomes of ``PROMPTS`` prompts with a few ties, and the baseline's lengths in characters."""
    rng = np.random.default_rng(seed)
    outcomes = rng.choice([1.0, 0.5, 0.0], size=PROMPTS, p=[0.6, 0.1, 0.3]).tolist()
    return outcomes, rng.integers(150, 250, PROMPTS).tolist()


def test_the_annotations_frame_is_on_alpaca_evals_scale():
    outcomes = [1.0, 0.5, 0.0, None, 1.0]
    policy, baseline = ["a", "bb", "ccc", "dddd", "éé"], ["x", "yy", "zzz", "w", "v"]
    frame = alpaca_eval_annotations(outcomes, policy, baseline)
    # unparsable outcomes are left out (as from the WinRate); the index stays the prompt's position in the file
    assert frame["index"].tolist() == [0, 1, 2, 4]
    # alpaca-eval: 1 the baseline (output_1) wins, 2 the model (output_2) wins, 1.5 a tie
    assert frame["preference"].tolist() == [2.0, 1.5, 1.0, 2.0]
    assert frame["output_2"].tolist() == ["a", "bb", "ccc", "éé"] and frame["output_1"].tolist() == ["x", "yy", "zzz", "v"]
    assert set(frame["generator_1"]) == {"baseline"} and set(frame["generator_2"]) == {"policy"}
    # the package's own reading of the frame gives prefalign's WinRate and counts
    package = get_winrate(frame)
    ours = win_rate(outcomes, resamples=10)
    assert package["win_rate"] == pytest.approx(ours["value"]) == 62.5
    assert (package["n_wins"], package["n_draws"], package["n_wins_base"]) == (ours["wins"], ours["ties"], ours["losses"])
    with pytest.raises(ValueError, match="AlpacaEval has 805 prompts, got 806"):
        alpaca_eval_annotations([1.0] * 806, ["a"] * 806, ["b"] * 806)


def test_the_value_is_the_packages_on_the_frame_prefalign_builds(difficulty_table, monkeypatch):
    outcomes, baseline_chars = sample_outcomes()
    policy_chars = [length + (120 if outcome == 1.0 else -40) for outcome, length in zip(outcomes, baseline_chars)]
    outcomes[7] = None  # one unparsable reply
    answers = judged(outcomes, policy_chars, baseline_chars)
    frames: list[pd.DataFrame] = []
    package_function = glm_winrate.get_length_controlled_winrate

    def spy(annotations: pd.DataFrame, **kwargs):
        frames.append(annotations.copy())
        return package_function(annotations, **kwargs)

    monkeypatch.setattr(glm_winrate, "get_length_controlled_winrate", spy)
    result = AlpacaEvalLengthControl(resamples=8)(answers, seed=0)
    assert set(result) == {LC_KEY}
    metric = result[LC_KEY]
    assert len(frames) == 1 + 8  # the fit, then one refit per bootstrap resample
    frame = frames[0]
    kept = [i for i, outcome in enumerate(outcomes) if outcome is not None]
    assert frame["index"].tolist() == kept
    assert frame["preference"].tolist() == [1 + outcomes[i] for i in kept]
    # the package measures the answers' characters (not the tokens or bytes prefalign also has)
    assert frame["output_2"].str.len().tolist() == [policy_chars[i] for i in kept]
    assert frame["output_1"].str.len().tolist() == [baseline_chars[i] for i in kept]

    direct = package_function(frame.copy(), save_weights_dir=None)
    assert metric["value"] == pytest.approx(direct["length_controlled_winrate"], rel=1e-12)
    assert metric["standard_error"] == pytest.approx(direct["lc_standard_error"], rel=1e-12)
    assert metric["win_rate"] == pytest.approx(win_rate(outcomes, resamples=10)["value"])
    assert metric["n"] == len(kept) == PROMPTS - 1
    version = importlib.metadata.version("alpaca_eval")
    assert (metric["method"], metric["package"], metric["version"], metric["glm_name"]) == (
        "alpaca_eval", "alpaca-eval", version, "length_controlled_v1")
    assert f"alpaca-eval {version}" in metric["label"] and "length_controlled_v1" in metric["label"]
    assert metric["ci_low"] <= metric["ci_high"]
    # the judge favours longer answers here: the fitted length coefficient says so (std_delta_len is the
    # baseline's length minus the policy's, so longer policy answers that win give a negative coefficient)
    assert metric["glm_weights"]["np.tanh(std_delta_len)"] < 0
    assert metric["mean_length_chars"]["policy"] == pytest.approx(np.mean([policy_chars[i] for i in kept]))
    # the token lengths play no part in AlpacaEval's LC
    shuffled = JudgedAnswers(outcomes, answers.policy_answers, answers.baseline_answers, [1] * PROMPTS, [999] * PROMPTS)
    assert AlpacaEvalLengthControl(resamples=0)(shuffled)[LC_KEY]["value"] == pytest.approx(metric["value"], rel=1e-12)


def test_longer_winning_answers_lower_the_lc_and_not_the_raw_win_rate(difficulty_table):
    outcomes, baseline_chars = sample_outcomes(seed=1)
    rng = np.random.default_rng(2)
    unrelated = [length + int(shift) for length, shift in zip(baseline_chars, rng.integers(-60, 60, PROMPTS))]
    # the same verdicts; the policy's answers are longer where it wins (or, mirrored, where it loses)
    longer_wins = [length + (200 if o == 1.0 else -50) for o, length in zip(outcomes, baseline_chars)]
    longer_losses = [length + (-50 if o == 1.0 else 200) for o, length in zip(outcomes, baseline_chars)]
    control = AlpacaEvalLengthControl(resamples=0)
    results = {name: control(judged(outcomes, chars, baseline_chars))[LC_KEY]
               for name, chars in (("unrelated", unrelated), ("longer_wins", longer_wins), ("longer_losses", longer_losses))}
    raw = {name: metric["win_rate"] for name, metric in results.items()}
    assert len(set(raw.values())) == 1  # the raw win rate knows nothing of lengths
    lc = {name: metric["value"] for name, metric in results.items()}
    # wins that come with longer answers are partly the length's: discounted; wins despite shorter answers count more
    assert lc["longer_wins"] < lc["unrelated"] - 3
    assert lc["longer_losses"] > lc["unrelated"] + 3
    assert lc["longer_wins"] < raw["unrelated"] < lc["longer_losses"]


def test_without_the_difficulty_file_it_fails_naming_the_file_and_the_way_to_provide_it(offline_hub):
    control = AlpacaEvalLengthControl()
    with pytest.raises(LengthControlUnavailable) as failure:
        control.prepare()
    message = str(failure.value)
    for needed in ("df_gamed.csv", "tatsu-lab/alpaca_eval", "HF_HUB_OFFLINE=1", "HF_HUB_CACHE",
                   "bench.length_control.fallback_to_approximation=true"):
        assert needed in message, needed
    outcomes, baseline_chars = sample_outcomes()
    with pytest.raises(LengthControlUnavailable, match="df_gamed.csv"):  # a direct call is checked too
        control(judged(outcomes, baseline_chars, baseline_chars))


def test_the_approximation_is_reported_under_its_own_key_only_when_asked(offline_hub):
    outcomes, baseline_chars = sample_outcomes()
    answers = judged(outcomes, [n + 30 for n in baseline_chars], baseline_chars)
    result = AlpacaEvalLengthControl(resamples=20, fallback_to_approximation=True)(answers, seed=3)
    assert set(result) == {LC_APPROX_KEY}  # never under lc_winrate
    metric = result[LC_APPROX_KEY]
    assert metric["label"] == LC_APPROX_LABEL and metric["lengths"] == "tokens"
    assert "df_gamed.csv" in metric["fallback_from_alpaca_eval"]
    expected = length_controlled_win_rate(outcomes, answers.policy_tokens, answers.baseline_tokens, resamples=20, seed=3)
    assert metric["value"] == pytest.approx(expected["value"])


def test_glm_name_is_checked(difficulty_table):
    with pytest.raises(ValueError, match="glm_name='length_controlled_v2' is not one of alpaca-eval's GLMs"):
        AlpacaEvalLengthControl(glm_name="length_controlled_v2").prepare()


def test_every_bench_but_alpaca_eval_reports_the_labelled_approximation():
    benches = {path.stem: instantiate(OmegaConf.load(path)) for path in sorted(BENCH_CONF.glob("*.yaml"))}
    assert {"alpaca_eval", "builtin", "mt_bench", "vicuna_bench", "arena_hard", "hh_test", "tldr_test",
            "ultrafeedback_test"} <= set(benches)
    outcomes, baseline_chars = sample_outcomes()
    answers = judged(outcomes, [n + 30 for n in baseline_chars], baseline_chars)
    for name, bench in benches.items():
        if name == "alpaca_eval":
            assert isinstance(bench.length_control, AlpacaEvalLengthControl)
            assert not bench.length_control.fallback_to_approximation  # opt-in only
            continue
        assert isinstance(bench.length_control, ApproximateLengthControl), name
        result = bench.length_control(answers)
        assert set(result) == {LC_APPROX_KEY}, name
        assert "prefalign's approximation" in result[LC_APPROX_KEY]["label"]


def test_eval_md_names_the_length_control_it_reports():
    from prefalign.evaluation.policy import eval_markdown

    point = {"value": 50.0, "ci_low": 40.0, "ci_high": 60.0, "n": 10}
    base = {"benchmark": "b", "judge": "j", "policy": "p", "baseline": "reference model of the run",
            "single": {"policy": point, "baseline": point},
            "winrate": {**point, "wins": 4, "ties": 2, "losses": 4},
            "judge_replies": {"total": 20, "unparsable": 0, "max_unparsable": 0.05}}
    alpaca = {"method": "alpaca_eval", "label": "length-controlled WinRate (AlpacaEval 2: alpaca-eval 0.6.6, GLM length_controlled_v1)"}
    cases = {
        # an eval.json written before the split: its lc_winrate was prefalign's approximation
        "old": ({LC_KEY: point}, LC_APPROX_LABEL),
        "approximation": ({LC_APPROX_KEY: {**point, "label": LC_APPROX_LABEL}}, LC_APPROX_LABEL),
        "alpaca_eval": ({LC_KEY: {**point, **alpaca}}, alpaca["label"]),
    }
    for name, (lc, label) in cases.items():
        result = {**base, **lc}
        assert reported_length_control(result)[0] == label, name
        assert f"| {label} vs baseline | 50.00 % | [40.00, 60.00] | 10 |" in eval_markdown(result), name
    assert reported_length_control(base) is None
