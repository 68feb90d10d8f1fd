"""`python -m ascend_super.runtime.serve` = `ascend-serve`."""

from .cli import main

main()
