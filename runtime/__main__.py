"""`python -m ascend_super.runtime` = `ascend-run`."""

from .entry import run

run()
