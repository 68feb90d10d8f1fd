"""The benchmark's alternated runs (bench/run_engine.py --alternate-with, reported by bench/side_by_side.py): two
engines in one process step in the order A B B A ..., each step's time goes to the engine that took it, the
report's ratio pairs neighbouring steps, and alternating changes no engine's tokens."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import run_engine  # noqa: E402
import side_by_side  # noqa: E402


class FakeClock:
    """time.perf_counter stand-in: each engine's step advances it by that engine's own step time."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def fake_engine(name: str, step_time: float, clock: FakeClock, log: list[str]) -> run_engine.Opened:
    def prefill(ids: list[int]) -> int:
        log.append(f"{name} prefill {len(ids)}")
        return 100

    def step(token: int) -> int:
        log.append(f"{name} step")
        clock.now += step_time
        return token + 1

    return run_engine.Opened(0.0, prefill, step, lambda: log.append(f"{name} reset"), dict, lambda: None)


def test_alternate_orders_steps_abba_and_times_each_engine() -> None:
    clock, log, sleeps = FakeClock(), [], []
    engines = [fake_engine("A", 0.5, clock, log), fake_engine("B", 2.0, clock, log)]
    result = run_engine.alternate(engines, list(range(40)), 4, gap_s=0.25, clock=clock, sleep=sleeps.append)
    steps = [line.split()[0] for line in log if line.endswith("step")]
    warm = 2 * run_engine.WARMUP_NEW
    assert steps[warm:] == ["A", "B", "B", "A", "A", "B", "B", "A"]
    assert [line for line in log if "prefill" in line] == [f"A prefill {run_engine.WARMUP_PROMPT}",
                                                          f"B prefill {run_engine.WARMUP_PROMPT}",
                                                          "A prefill 40", "B prefill 40"]
    assert result["step_s"] == [[0.5] * 4, [2.0] * 4]
    assert result["tokens"] == [[100, 101, 102, 103, 104]] * 2
    assert sleeps == [0.25] * 8 and result["gap_s"] == 0.25
    assert side_by_side.alternated_ratio(result) == 4.0  # A's speed over B's


def test_alternated_ratio_pairs_neighbouring_steps() -> None:
    # one slow moment hits both engines' step 1: the paired ratio ignores it, a ratio of sums would not
    result = {"step_s": [[1.0, 10.0, 1.0], [1.1, 11.0, 1.1]]}
    assert side_by_side.alternated_ratio(result) == pytest.approx(1.1)


def test_report_shows_alternations_and_their_targets(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(side_by_side, "plot", lambda *args: None)  # matplotlib is the bench extra's, not the tests'
    results = json.loads((ROOT / "bench" / "results" / "side_by_side.json").read_text())
    case = results["cases"][0]
    label = side_by_side.alternation_label("ours fp16", side_by_side.REFERENCE)
    case["alternations"] = {label: [{"step_s": [[1.0, 1.0], [1.2, 1.4]], "gap_s": 0.01},
                                    {"step_s": [[1.0], [1.1]], "gap_s": 0.01}]}
    (tmp_path / "side_by_side.json").write_text(json.dumps(results))
    text = side_by_side.render(tmp_path)
    assert f"{label}: {case['title']} 1.20× (1.30, 1.10)" in text
    target = next(line for line in text.splitlines() if line.startswith(
        f"- Qwen2-0.5B decode at {case['prompt']}-token context vs llama.cpp F16"))
    assert target.endswith("(alternated in one process: 1.20x)"), target
    again = json.loads((tmp_path / "side_by_side.json").read_text())
    assert again["cases"][0]["alternations"] == case["alternations"]


def run_alternated(first: Path, second: Path, prompt: Path, new: int) -> dict[str, Any]:
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "run_engine.py"), "ours", str(first), "--prompt-ids",
                           str(prompt), "--new", str(new), "--threads", "2", "--alternate-with", "ours", str(second)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_alternating_changes_no_engine_tokens(converted, tmp_path: Path) -> None:
    """Two of our models stepped in turn in one process generate what each generates alone."""
    import ascend_super

    first, second = converted("qwen2-gqa7", "fp16"), converted("llama-llama3", "bf16")
    prompt = [3, 17, 5, 60, 2, 9, 41, 7]
    (tmp_path / "ids.json").write_text(json.dumps(prompt))
    result = run_alternated(first, second, tmp_path / "ids.json", 6)
    assert result["twin_engine"] == "ours" and result["twin_model"] == str(second)
    for path, tokens, steps in zip((first, second), result["tokens"], result["step_s"]):
        model = ascend_super.load(path, backend="cpu", threads=2)
        try:
            session = model.session(len(prompt) + 8)
            alone = [session.prefill(prompt, logits="none")[1]]
            for _ in range(6):
                alone.append(session.decode(alone[-1], logits="none")[1])
            session.close()
        finally:
            model.close()
        assert tokens == alone, path.name
        assert len(steps) == 6 and all(s > 0 for s in steps)


def test_alternate_with_rejects_other_engines(tmp_path: Path) -> None:
    (tmp_path / "ids.json").write_text("[1, 2]")
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "run_engine.py"), "transformers", "x",
                           "--prompt-ids", str(tmp_path / "ids.json"), "--new", "1", "--threads", "1",
                           "--alternate-with", "ours", "y.asw"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--alternate-with takes two of ours, llama.cpp" in done.stderr
