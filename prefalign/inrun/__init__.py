"""In-run influence: every trained pair's exact influence at the weights it is trained on (``inrun=influence``).

:mod:`~prefalign.inrun.ghost` computes the per-pair inner products from a training step's backward pass,
:mod:`~prefalign.inrun.callback` runs it during a Lightning fit, :mod:`~prefalign.inrun.record` reads and writes
the record and its per-pair summaries.
"""
