"""The names the front door exports: lazy_loader reads this stub, mypy types them."""

from .recordings import Recording as Recording
from .recordings import Recordings as Recordings
from .recordings import load_recordings as load_recordings
from .recordings import recorded_models as recorded_models
from .results_file import SCHEMA_VERSION as SCHEMA_VERSION
from .results_file import ResultsFile as ResultsFile
from .results_file import read_results as read_results
from .results_file import write_results as write_results
