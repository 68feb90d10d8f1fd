"""`python -m ascend_super.runtime` = `ascend-run`."""

from .cli import main

main()
