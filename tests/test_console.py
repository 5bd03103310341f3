"""Lines from concurrent processes sharing one pipe stay whole (study workers, sweep agents)."""

import io

from wash_sweeps.console import say


class Recorder(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def write(self, s: str) -> int:
        self.calls.append(s)
        return super().write(s)


def test_say_writes_line_and_newline_in_one_call():
    """print() under PYTHONUNBUFFERED=1 (as on CI) writes the text and the newline apart, and two
    study workers on one pipe met mid-line: a trial's progress line went missing."""
    out = Recorder()
    say("[load] trial 15 COMPLETE", out)
    say("second", out)
    assert out.calls == ["[load] trial 15 COMPLETE\n", "second\n"]
