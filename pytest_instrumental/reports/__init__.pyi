"""The names the front door exports: lazy_loader reads this stub, mypy types them."""

from .inspect_log import write_inspect_logs as write_inspect_logs
from .manifest import build_manifest as build_manifest
from .report_files import write_reports as write_reports
from .results_document import RunRecord as RunRecord
from .results_document import results_document as results_document
from .results_document import run_section as run_section
from .terminal import summary_lines as summary_lines
