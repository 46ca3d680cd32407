"""The suite's vocabulary: what an item is and what it ends as. Every other part of the package
speaks it; it imports nothing of the package but errors, text and the bundled data's place.

- ``conditions``: what an item is run under: a push (a suffix, an activation strength, a prefill,
  an ablation, a fine-tuning attack) and optionally a defence (``Condition``).
- ``items``: an item's key (model x condition x scenario) and its names in pytest.
- ``request``: what a model is asked for one item, and the one builder of the chat every backend sends.
- ``scenarios``: the InstrumentalEval scenarios and their categories.
- ``suffixes``: the steering texts (suffixes, defences, prefills) from the bundled and user directories.
- ``verdicts``: the record every item ends as (``ItemResult``), a verdict or an error.
"""

# The exports are named in __init__.pyi; each module loads on first use (SPEC 1's lazy loading),
# so importing one module of this package, as loading the plugin does, loads only that module.
import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach_stub(__name__, __file__)
