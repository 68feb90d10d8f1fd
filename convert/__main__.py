"""`python -m ascend_super.convert` = `ascend-convert`."""

from .entry import main

main()
