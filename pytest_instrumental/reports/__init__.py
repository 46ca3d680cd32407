"""What a run shows and writes, all rendered from its ``RunSummary``:

- ``terminal``: the tables and lines of the terminal summary.
- ``results_document``: the results JSON's document, with the run's ``manifest``.
- ``report_files``: report.md and report.html (``write_reports``), with ``plots``; they load
  jinja2 and matplotlib, which is why every front door loads a module on first use only.
- ``inspect_log``: the run as Inspect eval logs, through inspect_ai's own log API.
"""

# The exports are named in __init__.pyi; each module loads on first use (SPEC 1's lazy loading),
# so importing one module of this package, as loading the plugin does, loads only that module.
import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach_stub(__name__, __file__)
