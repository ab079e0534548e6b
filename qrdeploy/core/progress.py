"""Progress on stderr, silenced by --quiet or QRDEPLOY_QUIET=1.

One renderer serves every long job (attack runs, training epochs, the reproduce steps):
- on a terminal, one line redrawn in place at most 5 times a second;
- elsewhere (CI logs, `| tee`), one plain line every QRDEPLOY_PROGRESS_SECONDS seconds
  (default 10) and one when a stage ends, so a log shows that the job is alive without
  thousands of carriage returns.

`RunProgress` follows a run made of stages of unequal cost (the columns of an attack suite):
it shows "column k of N", the samples of the current stage, and an ETA over the whole run that
weighs every stage by its estimated cost per sample. Inside a batch an attack reports how far it
got with `report(fraction)`, so a long attack on one batch still moves the line. A job of
several runs (`attack --unhardened`: the hardened model's, then the baseline's) starts each
inside `spanning(Span(...))`, and the line shows the whole job's share and ETA.

A sharded run (qrdeploy.evaluation.shard) runs its shards quietly in workers; each shard's
RunProgress sends its share done through `relaying` to the driver, whose `ShardProgress` line
weighs the shards by their samples, so the one line over all shards moves while they run.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TextIO, TypeVar

T = TypeVar("T")

#: No ETA before this many seconds of work: the first batches say little about the rate.
MIN_ETA_SECONDS = 3.0

_SINK: ContextVar[Callable[[float], None] | None] = ContextVar("qrdeploy_progress", default=None)


@dataclass(frozen=True)
class Span:
    """Where one run sits in a job of several: the work of the runs `before` and `after` it (in
    the cost units of `Stage.work`), the `seconds` the earlier runs took, and a `label` that
    prefixes its line."""

    before: float = 0.0
    after: float = 0.0
    seconds: float = 0.0
    label: str = ""

    def job(self, fraction: float, work: float) -> float:
        """The share of the whole job done when this run, of `work` units, is at `fraction`."""
        return min((self.before + fraction * work) / (self.before + work + self.after), 1.0)

    def eta(self, elapsed: float, timed: float, fraction: float, work: float) -> float | None:
        """Seconds left in the job at the rate of `timed` units in `elapsed` seconds; None
        before enough was timed for a rate."""
        if timed <= 0 or elapsed < MIN_ETA_SECONDS:
            return None
        return elapsed / timed * ((1.0 - fraction) * work + self.after)

    def share(self, fraction: float, work: float) -> str:
        """'run p%', or 'all runs p%' for a run inside a job of several."""
        if self.before or self.after:
            return f"all runs {100 * self.job(fraction, work):.0f}%"
        return f"run {100 * fraction:.0f}%"

    @property
    def head(self) -> str:
        return f"{self.label}: " if self.label else ""


_SPAN: ContextVar[Span | None] = ContextVar("qrdeploy_span", default=None)

#: (share of the run done, share of it found done at its start) of each RunProgress move
Relay = Callable[[float, float], None]
_RELAY: ContextVar[Relay | None] = ContextVar("qrdeploy_relay", default=None)


@contextmanager
def spanning(span: Span) -> Iterator[None]:
    """RunProgress lines started inside the block count the whole job that `span` describes."""
    token = _SPAN.set(span)
    try:
        yield
    finally:
        _SPAN.reset(token)


@contextmanager
def relaying(sink: Relay) -> Iterator[None]:
    """RunProgress lines started inside the block send (share of their run done, share of it
    resumed from a state file) to `sink` whenever they move, quiet or not: a shard run in a
    worker tells the driver how far it got."""
    token = _RELAY.set(sink)
    try:
        yield
    finally:
        _RELAY.reset(token)


def relay_interval() -> float:
    """The least time between two progress messages of a worker: a second, or the log's
    interval when that is shorter."""
    return min(1.0, _interval())


@contextmanager
def sublabel(text: str) -> Iterator[None]:
    """Name one of several runs inside the current Span: lines started in the block read
    '[<span label>, <text>: ...]' (the μ points of one reproduce step, say)."""
    sp = _SPAN.get() or Span()
    with spanning(Span(sp.before, sp.after, sp.seconds,
                       f"{sp.label}, {text}" if sp.label else text)):
        yield


def quiet() -> bool:
    return os.environ.get("QRDEPLOY_QUIET", "") not in ("", "0")


def report(fraction: float) -> None:
    """How far the current unit of work (an attack on one batch) has got, in [0, 1]; a no-op
    unless a runner listens (see `listening`)."""
    sink = _SINK.get()
    if sink is not None:
        sink(min(max(fraction, 0.0), 1.0))


@contextmanager
def listening(sink: Callable[[float], None]) -> Iterator[None]:
    """Route `report` calls made inside the block to `sink`."""
    token = _SINK.set(sink)
    try:
        yield
    finally:
        _SINK.reset(token)


def duration(seconds: float) -> str:
    """'42s', '3m05s', '1h02m'."""
    s = int(max(seconds, 0) + 0.5)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _interval() -> float:
    try:
        return max(float(os.environ.get("QRDEPLOY_PROGRESS_SECONDS", "10")), 0.0)
    except ValueError:
        return 10.0


class Line:
    """The one progress line: `show(text)` draws it (rate-limited), `end(text)` finishes it."""

    def __init__(self, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream or sys.stderr
        self.clock = clock
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every = 0.2 if self.tty else _interval()
        self.last = -float("inf")
        self.width = 0

    def show(self, text: str, force: bool = False) -> None:
        now = self.clock()
        if not force and now - self.last < self.every:
            return
        self.last = now
        if self.tty:
            cols = _columns()
            text = text[: cols - 1]
            self.stream.write("\r" + text + " " * max(self.width - len(text), 0))
            self.width = len(text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def end(self) -> None:
        if self.tty and self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.stream.flush()
            self.width = 0


def _columns() -> int:
    """The terminal's width; 100 when it cannot say (or says 0, as some pseudo-terminals do)."""
    try:
        return os.get_terminal_size(sys.stderr.fileno()).columns or 100
    except (OSError, ValueError):
        return 100


class Bar:
    """A counter with a progress line: `desc done/total, elapsed, ETA[, postfix]`."""

    def __init__(self, total: int, desc: str, line: Line | None = None) -> None:
        self.total, self.desc, self.done, self.postfix = total, desc, 0, ""
        self.line = line or Line()
        self.t0 = self.line.clock()

    def update(self, n: int = 1) -> None:
        self.done += n
        self.line.show(self.text(), force=self.done >= self.total and not self.line.tty)

    def set_postfix(self, **values: str) -> None:
        self.postfix = " ".join(f"{k} {v}" for k, v in values.items())

    def text(self) -> str:
        elapsed = self.line.clock() - self.t0
        eta = ""
        if 0 < self.done < self.total:
            eta = f", ETA {duration(elapsed / self.done * (self.total - self.done))}"
        post = f", {self.postfix}" if self.postfix else ""
        return f"{self.desc}: {self.done}/{self.total}, {duration(elapsed)}{eta}{post}"

    def close(self) -> None:
        self.line.end()


def bar(total: int, desc: str) -> Bar | None:
    """A Bar, or None when quiet."""
    return None if quiet() else Bar(total, desc)


def progress(items: Iterable[T], desc: str, total: int | None = None) -> Iterator[T]:
    """Iterate with a progress line unless quiet."""
    seq = list(items) if total is None else items
    b = bar(total if total is not None else len(seq), desc)  # type: ignore[arg-type]
    for item in seq:
        yield item
        if b is not None:
            b.update()
    if b is not None:
        b.close()


@dataclass(frozen=True)
class Stage:
    """One stage of a run: `samples` to process at an estimated `cost` per sample (in model
    evaluations; only the ratios between stages matter)."""

    label: str
    samples: int
    cost: float = 1.0

    @property
    def work(self) -> float:
        return self.samples * max(self.cost, 1e-9)


class RunProgress:
    """Progress over the stages of one run: '[k/N] label done/n samples · run p% · elapsed,
    ETA'. Work already done when the run starts (a resumed run) counts as done but not toward
    the rate, so the ETA is not fooled by a resume."""

    def __init__(self, stages: Sequence[Stage], title: str = "column",
                 line: Line | None = None) -> None:
        self.stages = list(stages)
        self.title = title
        self.total = sum(s.work for s in self.stages) or 1.0
        self.span = _SPAN.get() or Span()  # the job this run is part of (none: itself)
        self.relay = _RELAY.get()  # a sharded run's driver, told how far this shard got
        self.line = line if line is not None else None if quiet() else Line()
        self.clock = self.line.clock if self.line else time.monotonic
        self.t0 = self.clock()
        self.base = 0.0  # work of the finished stages
        self.resumed = 0.0  # work found done at the start of stages, not timed
        self.k, self.done = -1, 0.0

    def start(self, label: str, already: int = 0) -> None:
        """Begin the stage `label` with `already` samples done (read back from a state file).
        A terminal's line shows every stage as it starts; a log (stderr not a terminal) gets the
        first stage's line, then at most one line per interval, so quick stages in a row do not
        flood it."""
        first = self.k < 0
        if not first:
            self.base += self.stages[self.k].work
        self.k = next(i for i, s in enumerate(self.stages) if s.label == label)
        stage = self.stages[self.k]
        self.done = float(already)
        self.resumed += already * max(stage.cost, 1e-9)
        self._show(force=first or (self.line is not None and self.line.tty))

    def at(self, samples: float) -> None:
        """The current stage has processed `samples` samples."""
        self.done = min(float(samples), float(self.stages[self.k].samples))
        self._show()

    def finish(self) -> None:
        if self.line is not None:
            self.line.end()

    def fraction(self) -> float:
        stage = self.stages[self.k] if self.k >= 0 else None
        now = self.base + (self.done * max(stage.cost, 1e-9) if stage else 0.0)
        return min(now / self.total, 1.0)

    def job_fraction(self) -> float:
        """The share of the whole job done (this run's when it is not part of a larger job)."""
        return self.span.job(self.fraction(), self.total)

    def eta(self) -> float | None:
        """Seconds left in the job, at the rate of the work this run did in this process; None
        before any."""
        f = self.fraction()
        return self.span.eta(self.clock() - self.t0, f * self.total - self.resumed, f,
                             self.total)

    def text(self) -> str:
        stage = self.stages[self.k]
        eta = self.eta()
        tail = f", ETA {duration(eta)}" if eta is not None else ""
        sp = self.span
        return (f"[{sp.head}{self.title} {self.k + 1} of {len(self.stages)}] {stage.label}: "
                f"{int(self.done)}/{stage.samples} samples; {sp.share(self.fraction(), self.total)}"
                f", {duration(sp.seconds + self.clock() - self.t0)}{tail}")

    def _show(self, force: bool = False) -> None:
        if self.relay is not None and self.k >= 0:
            self.relay(self.fraction(), self.resumed / self.total)
        if self.line is not None and self.k >= 0:
            self.line.show(self.text(), force=force)


class ShardProgress:
    """The one line over the shards of a sharded run: '[label: 3 shards on 2 workers] 1 of 3
    done; run p% (or all runs p% inside a Span), elapsed, ETA'. Each shard's share done arrives
    from its worker (`update`); the shares are weighed by the shards' samples. `work`: the run's
    work in `Stage.work` units, which places it in the job of a Span. Work found done at a
    shard's start (resumed from its state file) counts as done but not toward the rate."""

    def __init__(self, sizes: Sequence[int], work: float, desc: str,
                 line: Line | None = None) -> None:
        self.sizes = [max(int(s), 0) for s in sizes]
        self.samples = sum(self.sizes) or 1
        self.work = max(work, 1e-9)
        self.desc = desc
        self.shares = [0.0] * len(self.sizes)
        self.resumed = [0.0] * len(self.sizes)
        self.ended = [False] * len(self.sizes)
        self.span = _SPAN.get() or Span()
        self.line = line if line is not None else None if quiet() else Line()
        self.clock = self.line.clock if self.line else time.monotonic
        self.t0 = self.clock()
        self._show(force=True)  # a line at the start: the first shard may take long to report

    def update(self, index: int, share: float, resumed: float = 0.0) -> None:
        """Shard `index` has done `share` of its run, `resumed` of it read from its state file.
        A shard's share never goes back (a retried shard resumes from its state file), and
        messages that arrive after its end are ignored."""
        if not 0 <= index < len(self.sizes) or self.ended[index]:
            return
        # at most 99 % until its results are in: 'run 100%' with a shard open reads as the end
        self.shares[index] = max(self.shares[index], min(max(share, 0.0), 0.99))
        self.resumed[index] = min(max(resumed, 0.0), self.shares[index])
        self._show()

    def end(self, index: int) -> None:
        """Shard `index` has ended (its results are in)."""
        if 0 <= index < len(self.sizes) and not self.ended[index]:
            self.ended[index] = True
            self.shares[index] = 1.0
            self._show(force=True)

    def _weighed(self, values: Sequence[float]) -> float:
        return sum(v * s for v, s in zip(values, self.sizes, strict=True)) / self.samples

    def fraction(self) -> float:
        return min(self._weighed(self.shares), 1.0)

    def job_fraction(self) -> float:
        return self.span.job(self.fraction(), self.work)

    def eta(self) -> float | None:
        """Seconds left in the job at the rate of the work timed in this run; None before any."""
        f = self.fraction()
        return self.span.eta(self.clock() - self.t0, (f - self._weighed(self.resumed)) * self.work,
                             f, self.work)

    def text(self) -> str:
        sp = self.span
        eta = self.eta()
        left = self.fraction() < 1.0 or sp.after > 0  # the job goes on after this run
        tail = f", ETA {duration(eta)}" if eta is not None and left else ""
        return (f"[{sp.head}{self.desc}] {sum(self.ended)} of {len(self.sizes)} done; "
                f"{sp.share(self.fraction(), self.work)}, "
                f"{duration(sp.seconds + self.clock() - self.t0)}{tail}")

    def close(self) -> None:
        if self.line is not None:
            self.line.end()

    def _show(self, force: bool = False) -> None:
        if self.line is not None:
            self.line.show(self.text(), force=force)
