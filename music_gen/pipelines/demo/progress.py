"""Progress on the terminal: a bar per stage, the stage's own prints in its log file."""

from __future__ import annotations

import io
import re
import threading

STEP_LINE = re.compile(r"^\[(train|codec)\] step (\d+)/(\d+)")
VAL_LINE = re.compile(r"^\[(train|codec)\] step \d+ (val_loss [\d.]+|held-out SI-SNR [-\d.]+ dB)")


class StageOutput(io.TextIOBase):
    """Stands in for ``sys.stdout`` while a stage runs: what the platform prints (Ray
    Train's rank-0 lines, notices) goes to the stage's log file, and ``[train] step N/M``
    lines move a progress bar instead."""

    def __init__(self, log, bar):
        super().__init__()
        self.log, self.bar, self.pending = log, bar, ""

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.log.write(text)
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            self._line(line.strip())
        return len(text)

    def _line(self, line: str) -> None:
        if match := STEP_LINE.match(line):
            done, total = int(match[2]), int(match[3])
            self.bar.total = total
            self.bar.update(done - self.bar.n)
        elif match := VAL_LINE.match(line):
            self.bar.set_postfix_str(match[2])

    def flush(self) -> None:
        self.log.flush()


def tune_progress_callback(bar, count: int, steps: int):
    """A Ray Tune callback that moves ``bar`` with the steps ``count`` trials report."""
    from ray import tune

    class Progress(tune.Callback):
        def __init__(self):
            self.bar, self.steps = bar, {}

        def __getstate__(self) -> dict:
            return {"bar": None, "steps": {}}  # Tune saves its callbacks: not the terminal's bar

        def on_trial_result(self, iteration, trials, trial, result, **info):
            self.steps[trial.trial_id] = int(result.get("step") or 0)
            if self.bar is None:
                return
            self.bar.update(min(sum(self.steps.values()), self.bar.total) - self.bar.n)
            if result.get("val_loss") is not None:
                self.bar.set_postfix_str(
                    f"trial {trial.trial_id} val_loss {result['val_loss']:.4f}"
                )

    bar.total = count * steps
    bar.refresh()
    return Progress()


class Ticker:
    """A bar without a total that shows the elapsed time of a stage with no steps to count."""

    def __init__(self, bar, every_s: float = 0.5):
        self.bar, self.every_s = bar, every_s
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(self.every_s):
            self.bar.refresh()

    def __enter__(self) -> Ticker:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
