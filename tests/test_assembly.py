"""worker.assembly: a study is complete after a quiet period."""

from __future__ import annotations

import pytest

from worker.assembly import StudyAssembler


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_study_completes_after_quiet_period() -> None:
    clock = FakeClock()
    assembler = StudyAssembler(10.0, clock=clock)
    assembler.note("1.2.3")
    clock.now += 5
    assembler.note("1.2.4")
    assert assembler.pop_complete() == []
    clock.now += 5
    assert assembler.pop_complete() == ["1.2.3"]
    assert assembler.pop_complete() == []  # popped once
    assert assembler.pending() == 1
    clock.now += 5
    assert assembler.pop_complete() == ["1.2.4"]


def test_new_instance_restarts_the_timer() -> None:
    clock = FakeClock()
    assembler = StudyAssembler(10.0, clock=clock)
    assembler.note("1.2.3")
    clock.now += 9
    assembler.note("1.2.3")
    clock.now += 9
    assert assembler.pop_complete() == []
    clock.now += 1
    assert assembler.pop_complete() == ["1.2.3"]


def test_rejects_non_positive_timeout() -> None:
    with pytest.raises(ValueError, match="completion_timeout_s"):
        StudyAssembler(0)
