"""Moved to ``tests/helpers.py`` (helpers are named as helpers, not as tests).

This module only re-exports them, so that test files on branches not yet merged still
import; delete it once nothing imports ``test_server_support`` any more.
"""

from .helpers import *
from .helpers import server_errors  # noqa: F401 (a fixture)
