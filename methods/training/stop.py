"""Stopping a training run on a signal: the first SIGINT / SIGTERM asks for a save at the next step boundary."""
from __future__ import annotations

import signal
import sys
import threading

from tqdm import tqdm

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # Ctrl-C; kill, SLURM preemption, container stop


class Abort(KeyboardInterrupt):
    """A second stop signal: leave at once, without saving; `signum` gives the exit code 128 + signum."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopRequest:
    """The first SIGINT or SIGTERM asks the loop to stop at the next step boundary (after saving); a second aborts.

    Under torchrun (repeat_aborts=False) a repeat is ignored: a SLURM job's SIGTERM reaches every worker and torchrun
    forwards its own copy, and an abort there would skip the save the ranks are agreeing on; torchrun's SIGKILL after
    its shutdown timeout is the hard stop."""

    def __init__(self, repeat_aborts: bool = True):
        self.repeat_aborts = repeat_aborts

    def __enter__(self):
        self.signum: int | None = None
        self.previous = {}
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}
        return self

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum, frame):
        if self.requested:
            if self.repeat_aborts:
                raise Abort(signum)
            return
        self.signum = signum
        again = "send it again to abort without saving" if self.repeat_aborts else "all ranks stop together"
        tqdm.write(f"{signal.Signals(signum).name}: stopping after this step ({again})", file=sys.stderr)

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)
        return False
