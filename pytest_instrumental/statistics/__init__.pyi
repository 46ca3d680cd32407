"""The names the front door exports: lazy_loader reads this stub, mypy types them."""

from .comparison import Comparison as Comparison
from .comparison import compare as compare
from .dilemma import Dilemma as Dilemma
from .dilemma import compute_dilemma as compute_dilemma
from .gate import RULES as RULES
from .gate import Measured as Measured
from .gate import Rule as Rule
from .gate import Violation as Violation
from .gate import check as check
from .gate import rules_checked as rules_checked
from .metrics import Cell as Cell
from .metrics import Gap as Gap
from .metrics import Interval as Interval
from .metrics import compute_cells as compute_cells
from .metrics import compute_gap as compute_gap
from .summary import Baseline as Baseline
from .summary import RunSummary as RunSummary
from .summary import summarise as summarise
from .tamper import Tamper as Tamper
from .tamper import compute_tamper as compute_tamper
