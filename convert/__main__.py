"""`python -m ascend_super.convert` = `ascend-convert`."""

from .cli import main

main()
