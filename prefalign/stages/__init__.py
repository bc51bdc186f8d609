"""The stages: commands that read and write documented files, one module each.

=====================  ==================  ==========================================================
module                 command             writes
=====================  ==================  ==========================================================
``stages.train``       ``train.py``        ``policy/``, ``metrics.json``, ``checkpoints/``, TensorBoard
``stages.score``       ``score.py``        ``scores.parquet`` (cached shards)
``stages.select``      ``select.py``       ``selection.json``, or the analysis tables and plots
``stages.evaluate``    ``evaluate.py``     ``eval/<settings>/eval.json`` per run, the sweep's tables
``stages.sample``      ``sample.py``       ``responses.jsonl``, ``pairs.jsonl``
``stages.pipeline``    ``train.py select=<rule>``   warm-up, scores, selection and training in turn
``stages.iterative``   ``train.py online=iterative``   rounds of sampling and training
``stages.curriculum``  ``train.py online=curriculum``  Curri-DPO's stages
=====================  ==================  ==========================================================

Everything below this package (data, models, log-probs, losses, the Lightning module, scorers, rules, judges)
knows nothing of the stages; the entry scripts import a stage only once Hydra has composed the config, and only
the one the config asks for, so a plain ``python train.py`` loads no scoring, selection or evaluation code.
"""
