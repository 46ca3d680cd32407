"""The names the front door exports: lazy_loader reads this stub, mypy types them."""

from .conditions import ANTI_SUFFIX as ANTI_SUFFIX
from .conditions import BASELINE as BASELINE
from .conditions import PLAIN as PLAIN
from .conditions import PRO_SUFFIX as PRO_SUFFIX
from .conditions import Attack as Attack
from .conditions import Condition as Condition
from .conditions import Push as Push
from .conditions import Suffix as Suffix
from .conditions import parse_attack as parse_attack
from .conditions import parse_condition as parse_condition
from .conditions import run_conditions as run_conditions
from .items import ItemKey as ItemKey
from .items import item_name as item_name
from .items import nodeid_of as nodeid_of
from .request import Request as Request
from .request import chat_turns as chat_turns
from .scenarios import Category as Category
from .scenarios import Scenario as Scenario
from .scenarios import ScenarioSet as ScenarioSet
from .scenarios import load_scenarios as load_scenarios
from .suffixes import load_prefills as load_prefills
from .suffixes import load_suffixes as load_suffixes
from .verdicts import DECISIONS as DECISIONS
from .verdicts import ItemResult as ItemResult
