"""Select pairs from scores, or compare selectors.

``python select.py scores=<scores.parquet> select=lossdiff_irm select.keep_fraction=0.64`` writes
``selection.json``; ``python select.py scores=<...> analyze=true`` writes the overlap, correlation and noise
tables (Markdown and CSV) and score plots (PNG).
"""

from __future__ import annotations

import sys

if __name__ == "select":  # imported by the standard library under its own module name
    # This file shadows the standard library's C module `select` (the project layout names the entry point
    # select.py), so `import select` inside subprocess/selectors would land here. Hand such importers the
    # real module: the import system returns whatever sys.modules holds once this file has run. Loaded under
    # any other name (tests load it as a module), the file defines run() and main() as usual.
    import importlib.machinery
    import importlib.util
    import os

    _here = os.path.dirname(os.path.abspath(__file__))
    _path = [entry for entry in sys.path if os.path.abspath(entry or os.getcwd()) != _here]
    _spec = importlib.machinery.PathFinder.find_spec("select", _path)
    _module = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_module)
    sys.modules[__name__] = _module
else:
    from typing import Any

    import hydra
    from omegaconf import DictConfig

    def run(cfg: DictConfig) -> dict[str, Any]:
        """Write a selection (or, with ``analyze=true``, the analysis) into the run directory."""
        # imported once Hydra has composed the config: a typo or --help is answered before the selection code loads
        from prefalign.stages.select import run_analysis, run_selection

        return run_analysis(cfg) if cfg.analyze else run_selection(cfg)


    @hydra.main(version_base="1.3", config_path="conf", config_name="select")
    def main(cfg: DictConfig) -> float | None:
        result = run(cfg)
        return result.get("kept_fraction")


    if __name__ == "__main__":
        main()
