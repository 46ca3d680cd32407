"""Records of runs, read and written: the results JSON (``results_file``, schema in
docs/results-schema.md) and recorded runs read back into one ``Recording`` per item
(``recordings``: the reference implementation's logs, or this tool's results JSON), which replay,
the replay backend and the replay judge consume. Above the vocabulary, below the backends.
"""

# The exports are named in __init__.pyi; each module loads on first use (SPEC 1's lazy loading),
# so importing one module of this package, as loading the plugin does, loads only that module.
import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach_stub(__name__, __file__)
