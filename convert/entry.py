"""The ascend-convert console script: convert.cli run under the guards of runtime.entry (Ctrl-C during start-up,
closed or failing standard output)."""

from ascend_super.runtime.entry import run_console_script


def main() -> None:
    run_console_script("ascend_super.convert.cli")
