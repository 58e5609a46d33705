"""Progress lines: which mode for which terminal, what each mode prints, with a fake clock."""

from __future__ import annotations

import numpy as np
import pytest

from pytest_int8gate.progress import (
    HEARTBEAT_INTERVAL,
    ProgressPrinter,
    counted_batches,
    in_ci,
    progress_mode,
)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def printer(mode: str, clock: Clock, width: int = 0) -> tuple[ProgressPrinter, list[str], list[str]]:
    lines: list[str] = []
    rewrites: list[str] = []
    return (
        ProgressPrinter(mode, lines.append, rewrites.append, clock=clock, width=width),  # type: ignore[arg-type]
        lines,
        rewrites,
    )


def run_a_gate(show: ProgressPrinter, clock: Clock) -> None:
    show("calibrate", "calibrating 5 tensors on 600 samples")
    for done in (64, 128, 600):
        clock.now += 0.05
        show("calibrate", f"{done}/600 samples")
    show("build", "building the FP32 engine (onnxruntime)")
    show("evaluate", "evaluating on 500 samples")
    for step in range(3):
        clock.now += 0.5
        show("bisect", f"{step + 3} of 5 layers quantized: fail")
    clock.now += 1.0
    show.close()


@pytest.mark.parametrize(
    ("verbosity", "interactive", "ci", "mode"),
    [
        (-1, True, False, "off"),
        (0, True, False, "live"),
        (0, True, True, "stages"),  # a CI runner with a pseudo-terminal still wants plain log lines
        (0, False, False, "stages"),
        (1, True, False, "all"),
        (2, False, True, "all"),
    ],
)
def test_mode_follows_quietness_terminal_and_ci(
    verbosity: int, interactive: bool, ci: bool, mode: str
) -> None:
    assert progress_mode(verbosity=verbosity, interactive=interactive, ci=ci) == mode


def test_ci_variable() -> None:
    assert in_ci({"CI": "true"}) and in_ci({"CI": "1"})
    assert not in_ci({}) and not in_ci({"CI": "false"}) and not in_ci({"CI": "0"}) and not in_ci({"CI": ""})


def test_logs_get_one_line_per_stage_and_a_closing_line_for_long_stages() -> None:
    clock = Clock()
    show, lines, rewrites = printer("stages", clock)
    run_a_gate(show, clock)

    assert lines == [
        "int8gate calibrate: calibrating 5 tensors on 600 samples",
        "int8gate build: building the FP32 engine (onnxruntime)",
        "int8gate evaluate: evaluating on 500 samples",
        "int8gate bisect: 3 of 5 layers quantized: fail",
        "int8gate bisect: done, 3 steps in 2.0 s",
    ]
    assert rewrites == []


def test_logs_show_a_long_stage_at_least_every_few_seconds() -> None:
    # A culprit search that takes minutes must not look hung in CI: its latest step is printed at least
    # every HEARTBEAT_INTERVAL seconds (the benign twin above, a 2-second stage, prints one line).
    clock = Clock()
    show, lines, _ = printer("stages", clock)
    show("bisect", "trying calibrator mse for the whole model")
    for step in range(12):
        clock.now += 1.0
        show("bisect", f"{step + 1} of 51 layers quantized: fail")
    show.close()
    assert lines == [
        "int8gate bisect: trying calibrator mse for the whole model",
        "int8gate bisect [6, 5 s]: 5 of 51 layers quantized: fail",
        "int8gate bisect [11, 10 s]: 10 of 51 layers quantized: fail",
        "int8gate bisect: done, 13 steps in 12.0 s",
    ]
    assert HEARTBEAT_INTERVAL == 5.0  # the interval the lines above are 5 s apart by


def test_a_terminal_gets_one_live_line_rewritten_in_place_and_cleared() -> None:
    clock = Clock()
    show, lines, rewrites = printer("live", clock)
    run_a_gate(show, clock)

    assert lines == []
    shown = [r.rstrip() for r in rewrites]
    assert shown[0] == "int8gate calibrate: calibrating 5 tensors on 600 samples"
    assert "int8gate calibrate: 128/600 samples" in shown  # 0.1 s after the stage line
    assert "int8gate calibrate: 64/600 samples" not in shown  # within 0.1 s of the previous rewrite
    assert "int8gate bisect: 3 of 5 layers quantized: fail" in shown
    assert "int8gate bisect [3]: 5 of 5 layers quantized: fail" in shown  # the step count of the stage
    assert shown[-2:] == ["", ""] and rewrites[-1] == ""  # the line is blanked, then the cursor is home
    assert all(len(r) >= len(p.rstrip()) for p, r in zip(shown, rewrites[1:], strict=False))


def test_live_lines_are_cut_to_the_terminal_width() -> None:
    show, _, rewrites = printer("live", Clock(), width=30)
    show("bisect", "a message much longer than thirty columns")
    assert rewrites == ["int8gate bisect: a message..."] and len(rewrites[0]) < 30


def test_verbose_prints_every_event_but_counter_ticks_at_most_once_a_second() -> None:
    clock = Clock()
    show, lines, _ = printer("all", clock)
    run_a_gate(show, clock)

    assert "int8gate calibrate: 64/600 samples" in lines
    assert "int8gate calibrate: 128/600 samples" not in lines  # 0.05 s after the previous tick
    assert "int8gate calibrate: 600/600 samples" in lines  # the last tick always shows
    assert sum(line.startswith("int8gate bisect:") for line in lines) == 3


def test_quiet_prints_nothing() -> None:
    clock = Clock()
    show, lines, rewrites = printer("off", clock)
    run_a_gate(show, clock)
    assert lines == [] and rewrites == []


def test_live_without_a_rewrite_function_falls_back_to_stage_lines() -> None:
    lines: list[str] = []
    show = ProgressPrinter("live", lines.append)
    show("build", "x")
    assert show.mode == "stages" and lines == ["int8gate build: x"]


def test_counted_batches_pass_every_batch_and_count_samples() -> None:
    batches = [{"x": np.zeros((n, 2), np.float32)} for n in (4, 4, 3)]
    seen: list[tuple[int, int]] = []

    out = list(counted_batches(iter(batches), 11, lambda done, total: seen.append((done, total))))

    assert [b["x"].shape[0] for b in out] == [4, 4, 3]
    assert seen == [(4, 11), (8, 11), (11, 11)]
