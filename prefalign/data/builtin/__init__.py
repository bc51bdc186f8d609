"""The built-in preference data set (``data=builtin``): verifiable short tasks with known label noise.

No public preference data set is reachable offline, so prefalign ships its own, small enough to live in
the package (``files/``, about 2 MB) and regenerable from a seed::

    python -m prefalign.data.builtin.build        # ~15-25 min on a 2-core CPU; see build.py for every option

What it holds
    * ``train.jsonl``: 3,000 preference pairs (250 per task family), with 20% of the labels flipped and 10%
      ambiguous pairs (both responses correct or both wrong), like a noisy human annotator;
    * ``val.jsonl``: 300 clean pairs on other prompts (for validation gradients, auxiliary models);
    * ``test.jsonl``: 300 held-out prompts with checkers and reference answers;
    * ``manifest.json``: seed, settings, counts, noise, the annotator model and the embedded model's
      greedy success rate on the test prompts, per family and overall.

Why it is a test bed for preference-data selection
    Every prompt comes from one of twelve families of short instructions whose answers a program checks
    (two-digit addition, which number is larger, capital letters, weekdays, letter counts, sorting,
    parity, one-digit addition, category questions, capitals, opposites, repeating a word; see
    :mod:`prefalign.data.builtin.tasks`). Candidate responses are the embedded model's own answers (greedy
    and sampled) and programmatic right and wrong variants, all labelled by the checker, so the truth of
    every pair is known: a selector can be scored on how many flipped and ambiguous pairs it removes, and a
    trained policy on how many held-out prompts it now answers correctly
    (:func:`prefalign.data.builtin.tasks.check_response`). The ground truth is in each pair's ``metadata``
    (``label_flipped``, ``ambiguous``, ``chosen_correct``, ``rejected_correct``), which training, scoring and
    selection never read. ``score_chosen`` / ``score_rejected`` are simulated 1-10 annotator ratings (an
    external, noisy signal like UltraFeedback's GPT-4 scores).
"""

from pathlib import Path

#: Folder of the committed files (``train.jsonl``, ``val.jsonl``, ``test.jsonl``, ``manifest.json``).
FILES_DIR = Path(__file__).resolve().parent / "files"

__all__ = ["FILES_DIR"]
