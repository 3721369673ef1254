"""Shared machinery of the pre-flight scripts: --preset/--set parsing, one printed line per check, exit code.

A check is a function returning (status, detail) with status "PASS", "WARN" or "FAIL", or raising UserError (a
FAIL carrying its one-line message). `Checks.run` calls it, prints "[STATUS] name: detail" at once and keeps the
result; `Checks.finish` prints the tally and returns the exit code (0 no FAIL, 1 any FAIL). Check functions take
the objects they inspect, so tests can hand them planted faults directly.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Callable

from config import Config, add_config_args
from methods.run_config import load_config
from utils.errors import UserError

PASS, WARN, FAIL = "PASS", "WARN", "FAIL"


@dataclass
class Result:
    status: str
    name: str
    detail: str


class Checks:
    """Prints each result as it arrives; FAIL of any check makes the exit code 1."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stdout
        self.results: list[Result] = []

    def record(self, status: str, name: str, detail: str = "") -> bool:
        self.results.append(Result(status, name, detail))
        print(f"[{status}] {name}" + (f": {detail}" if detail else ""), file=self.stream, flush=True)
        return status != FAIL

    def expect(self, name: str, ok: bool, detail: str = "") -> bool:
        return self.record(PASS if ok else FAIL, name, detail)

    def run(self, name: str, fn: Callable, *args, **kwargs):
        """Record fn's (status, detail); any exception is this check's FAIL (one line), never a traceback.

        Returns the optional third element of fn's result (a value later checks need), or None on FAIL.
        """
        try:
            status, detail, *value = fn(*args, **kwargs)
        except UserError as err:
            self.record(FAIL, name, str(err))
            return None
        except Exception as err:  # a pre-flight reports every problem it meets rather than stopping at the first
            first = str(err).splitlines()[0][:200] if str(err) else ""
            self.record(FAIL, name, f"{type(err).__name__}: {first}")
            return None
        self.record(status, name, detail)
        return value[0] if value and status != FAIL else None

    @property
    def failed(self) -> list[str]:
        return [r.name for r in self.results if r.status == FAIL]

    def finish(self) -> int:
        counts = {s: sum(r.status == s for r in self.results) for s in (PASS, WARN, FAIL)}
        print(f"{counts[PASS]} passed, {counts[WARN]} warnings, {counts[FAIL]} failed"
              + (f" ({', '.join(self.failed)})" if self.failed else ""), file=self.stream, flush=True)
        return 1 if self.failed else 0


def parse_args(description: str, argv: list[str] | None,
               extra: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    add_config_args(parser)
    if extra is not None:
        extra(parser)
    return parser.parse_args(argv)


def check_config(preset: str, overrides: list[str]) -> tuple[str, str, Config]:
    cfg = load_config(preset, overrides)
    return PASS, f"preset {preset}, model {cfg.model.arch}, data {cfg.data.data_dir}", cfg


def format_count(n: float) -> str:
    return f"{n / 1e6:.1f}M" if n < 1e9 else f"{n / 1e9:.2f}B"
