"""The BeeS proxy as its authors run it: a separate model (its own initial weights as the reference), checked to
share the policy's tokenizer, and a proxy trained before, used as it is."""

from __future__ import annotations

import numpy as np
import pytest

from prefalign.data.scores_file import read_scores
from prefalign.models import TinyModel
from tests.entry import CliResult, run_cli
from tests.test_pipeline import TOKENIZER

SCORE = ["model=tiny_llama", "data.max_train_pairs=24", "data.max_val_pairs=8", "scores=[bees_implicit]",
         "++scorers.bees_implicit.seed_pairs=16", "++scorers.bees_implicit.epochs=1", "optimizer.lr=1e-3"]


def score(tmp_path, name: str, *args: str) -> CliResult:
    """``score.py`` in this process with a cache of its own: nothing of another run's is reused (the embedded
    tokenizer comes from the default cache, converted once)."""
    return run_cli("score", *SCORE, f"paths.cache_dir={tmp_path / name / 'cache'}", TOKENIZER, *args,
                   f"hydra.run.dir={tmp_path / name}")


def test_a_separate_proxy_with_the_policys_weights_gives_the_default_margins(tmp_path, tokenizer):
    # the tiny policy's own initial weights, saved as a separate model: DPO against its own initial weights and
    # rho against them must give what the default (the policy's initial weights, the run's reference) gives
    folder = tmp_path / "proxy-model"
    TinyModel(name="tiny_llama", architecture="llama").load_model().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    default = score(tmp_path, "default")
    assert default.returncode == 0, default.stderr[-3000:]
    separate = score(tmp_path, "separate", f"++scorers.bees_implicit.model={folder}")
    assert separate.returncode == 0, separate.stderr[-3000:]
    margins = [read_scores(tmp_path / name)[0]["bees_implicit"].to_numpy() for name in ("default", "separate")]
    assert np.abs(margins[0]).max() > 1e-3  # the proxy moved: a margin of zero everywhere would match anything
    np.testing.assert_allclose(margins[1], margins[0], atol=2e-4, rtol=1e-3)

    # a smaller proxy of another size gives other margins
    small = tmp_path / "small-model"
    TinyModel(name="tiny_small", architecture="llama", hidden_size=32, intermediate_size=64, seed=1).load_model().save_pretrained(small)
    tokenizer.save_pretrained(small)
    other = score(tmp_path, "small", f"++scorers.bees_implicit.model={small}")
    assert other.returncode == 0, other.stderr[-3000:]
    assert not np.allclose(read_scores(tmp_path / "small")[0]["bees_implicit"].to_numpy(), margins[0], atol=1e-3)

    # the proxy trained by the first run, given as scorers.bees_implicit.proxy, is used as it is: same margins
    import json

    entry = json.loads((tmp_path / "default" / "scores_summary.json").read_text())["cache_entry"]
    proxy = json.loads((tmp_path / entry / "bees_implicit_proxy.json").read_text())["proxy"]
    reused = score(tmp_path, "reused", f"++scorers.bees_implicit.proxy={proxy}")
    assert reused.returncode == 0, reused.stderr[-3000:]
    assert "the proxy model given" in reused.stdout
    np.testing.assert_allclose(read_scores(tmp_path / "reused")[0]["bees_implicit"].to_numpy(), margins[0], atol=1e-5)


def test_a_proxy_with_another_tokenizer_is_refused(tmp_path, tokenizer):
    folder = tmp_path / "other-vocabulary"
    TinyModel(name="tiny_llama", architecture="llama").load_model().save_pretrained(folder)
    other = type(tokenizer).from_pretrained(tokenizer.name_or_path)
    other.add_tokens(["<an-extra-token>"])
    other.save_pretrained(folder)
    result = score(tmp_path, "refused", f"++scorers.bees_implicit.model={folder}")
    assert result.returncode != 0 and "its tokenizer is not the policy's" in result.stderr
