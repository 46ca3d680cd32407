"""The statistics of a run, from its item results: plain functions over plain data.

- ``metrics``: counts and rates per cell with Wilson intervals, the steerability gap (Delta) with
  its Newcombe interval, McNemar and the signed-rank test.
- ``comparison``: the change from a baseline release, paired by scenario.
- ``dilemma``: what a defence does, and how far each push overrides it.
- ``tamper``: how little fine-tuning turns the tendencies back on.
- ``gate``: the release gate, a table of rules (``RULES``) giving ``Violation``s.
- ``summary``: the end of a run, computed once (``RunSummary``), which every report renders.
"""

# The exports are named in __init__.pyi; each module loads on first use (SPEC 1's lazy loading),
# so importing one module of this package, as loading the plugin does, loads only that module.
import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach_stub(__name__, __file__)
