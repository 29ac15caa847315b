"""What apply reports while it works, and where those reports go.

The executor emits :class:`Event` values; a sink shows them. Three sinks:
``RichSink`` (a progress bar and one line per finished step, on a terminal),
``PlainSink`` (one line per event, for logs and pipes) and ``JsonSink`` (one JSON
object per line, for CI). Sinks are called from worker threads, so each one
serialises its own output.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol, TextIO

from pacsinfra.state.store import utcnow


@dataclass(frozen=True)
class Event:
    """One thing that happened during an apply."""

    type: str  # begin | start | done | fail | skip | end | message
    address: str = ""
    action: str = ""
    message: str = ""
    elapsed: float | None = None
    data: dict[str, Any] = field(default_factory=dict)
    time: str = field(default_factory=utcnow)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"event": self.type, "time": self.time}
        if self.address:
            d["address"] = self.address
        if self.action:
            d["action"] = self.action
        if self.message:
            d["message"] = self.message
        if self.elapsed is not None:
            d["elapsed"] = round(self.elapsed, 3)
        d.update(self.data)
        return d


class EventSink(Protocol):
    """Receives events; ``close`` finishes the display."""

    def __call__(self, event: Event) -> None: ...

    def close(self) -> None: ...


VERB = {
    "create": ("creating", "created"),
    "update": ("updating", "updated"),
    "replace": ("replacing", "replaced"),
    "delete": ("deleting", "deleted"),
    "adopt": ("adopting", "adopted"),
    "forget": ("forgetting", "forgotten"),
}


def _line(ev: Event) -> str | None:
    ing, ed = VERB.get(ev.action, (ev.action, ev.action))
    took = f" ({ev.elapsed:.1f}s)" if ev.elapsed is not None else ""
    if ev.type == "start":
        return f"{ev.address}: {ing}..."
    if ev.type == "done":
        return f"{ev.address}: {ed}{took}"
    if ev.type == "fail":
        return f"{ev.address}: {ev.action} FAILED{took}: {ev.message}"
    if ev.type == "skip":
        return f"{ev.address}: skipped ({ev.message})"
    if ev.message:
        return ev.message
    return None


class NullSink:
    """Drops every event (library use, benchmarks)."""

    def __call__(self, event: Event) -> None:
        return None

    def close(self) -> None:
        return None


class CollectSink:
    """Keeps every event in a list (tests)."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        with self._lock:
            self.events.append(event)

    def close(self) -> None:
        return None


class PlainSink:
    """One plain line per event."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        text = _line(event)
        if text is None:
            return
        with self._lock:
            self.stream.write(text + "\n")
            self.stream.flush()

    def close(self) -> None:
        return None


class JsonSink:
    """One JSON object per line."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        with self._lock:
            self.stream.write(json.dumps(event.to_dict(), sort_keys=False) + "\n")
            self.stream.flush()

    def close(self) -> None:
        return None


class RichSink:
    """A rich progress bar with one printed line per finished step (terminals only)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.console = Console(file=stream or sys.stdout)
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
        )
        self._task: Any = None
        self._lock = threading.Lock()
        self._started = time.monotonic()

    def __call__(self, event: Event) -> None:
        with self._lock:
            if event.type == "begin":
                self.progress.start()
                self._task = self.progress.add_task(
                    "applying", total=int(event.data.get("steps", 0))
                )
                return
            if event.type == "end":
                self.progress.stop()
                if event.message:
                    self.console.print(event.message, highlight=False, markup=False)
                return
            text = _line(event)
            if event.type == "start" or text is None:
                return
            style = {"done": "green", "fail": "bold red", "skip": "yellow"}.get(event.type, "")
            from rich.text import Text

            self.progress.console.print(Text(text, style=style))
            if self._task is not None and event.type in ("done", "fail", "skip"):
                self.progress.advance(self._task)

    def close(self) -> None:
        with self._lock:
            self.progress.stop()


def make_sink(*, json_mode: bool, stream: TextIO | None = None) -> EventSink:
    """JSON lines with ``--json``; a progress bar on a terminal; plain lines otherwise."""
    out = stream or sys.stdout
    if json_mode:
        return JsonSink(out)
    if out.isatty():
        return RichSink(out)
    return PlainSink(out)
