"""Preference pairs from the model's own samples: responses and rewards (:mod:`~prefalign.online.responses`,
:mod:`~prefalign.online.rewards`), pair rules (:mod:`~prefalign.online.pairs`) and the sampling stage
(:mod:`~prefalign.stages.sample`, ``sample.py``)."""
