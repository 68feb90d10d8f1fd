"""bench/side_by_side.py's report names the command that measured it: the one recorded in its JSON, or, for results
written before the command was recorded, the entry point that used to be assumed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import side_by_side  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "side_by_side.json"


@pytest.mark.parametrize("command", ["bench/side_by_side.py --models qwen2 --rounds 5", None])
def test_report_names_the_command_that_measured_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                   command: str | None) -> None:
    monkeypatch.setattr(side_by_side, "plot", lambda *args: None)  # matplotlib is the bench extra's, not the tests'
    results = json.loads(RESULTS.read_text())
    results["meta"].pop("command", None)
    if command is not None:
        results["meta"]["command"] = command
    (tmp_path / "side_by_side.json").write_text(json.dumps(results))
    side_by_side.render(tmp_path)
    first = (tmp_path / "side_by_side.md").read_text().splitlines()[0]
    expected = command or ("make bench" if results["meta"].get("kernels", "native") == "native"
                           else f"bench/side_by_side.py --kernels {results['meta']['kernels']}")
    assert f" by `{expected}` (" in first, first
