"""Is a service up: C-ECHO its DICOM port until it answers, or say why not with its log."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from pacsinfra.errors import ServiceCheckError
from pacsinfra.services.supervisor import ServiceStatus

#: a service still writing to its log at the deadline gets up to this many times the time
PROGRESS_CAP = 3.0
#: seconds without a change to its log after which a service that does not answer is stuck
LOG_QUIET_S = 15.0
#: how often the log is looked at while waiting
LOG_SAMPLE_S = 5.0


class LogWatch:
    """When a service's log last changed, sampled every few seconds (reading a remote
    log costs a command)."""

    def __init__(self, log_tail: Callable[[], str]) -> None:
        self._tail = log_tail
        self._seen: str | None = None
        self._next = 0.0
        self.changed_at: float | None = None

    def look(self, now: float) -> None:
        """Sample the log if the last sample is old enough."""
        if now < self._next:
            return
        self._next = now + LOG_SAMPLE_S
        try:
            text = self._tail()
        except Exception:  # noqa: BLE001 - an unreadable log is no progress
            return
        if self._seen is not None and text != self._seen:
            self.changed_at = now
        self._seen = text

    def moved_within(self, now: float, seconds: float) -> bool:
        """Whether the log changed in the last ``seconds``."""
        return self.changed_at is not None and now - self.changed_at <= seconds

VERIFICATION = "1.2.840.10008.1.1"
HEALTH_AE = "PXHEALTH"


def exit_text(info: dict[str, Any]) -> str:
    """A supervisor's ``last_exit`` in words."""
    if info.get("signal"):
        return f"signal {info['signal']}"
    if info.get("error"):
        return str(info["error"])
    return f"code {info.get('code')}"


def indent_log(text: str) -> str:
    """A log tail quoted for an error message."""
    return "\n".join("  | " + line for line in text.splitlines()) or "  (log empty)"


def endpoint(config: dict[str, Any] | Any, host: str | None = None) -> tuple[str, str, int]:
    """(AE title, host, port) to reach a service's DICOM listener from the pacsinfra machine.

    A specific ``bind`` address is used as is; a wildcard bind is reached at ``host``
    (the machine's address), else loopback.
    """
    bind = str(config.get("bind") or "")
    where = bind if bind not in ("", "0.0.0.0", "::") else (host or "127.0.0.1")
    return str(config.get("ae_title", "")), where, int(config.get("port", 11112))


def c_echo(aet: str, host: str, port: int) -> tuple[bool, str, int | None]:
    """One C-ECHO: (success, what happened, DICOM status)."""
    from pynetdicom import AE

    ae = AE(ae_title=HEALTH_AE)
    ae.add_requested_context(VERIFICATION)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 5
    assoc = ae.associate(host, port, ae_title=aet)
    if not assoc.is_established:
        return False, "association rejected" if assoc.is_rejected else "no answer", None
    try:
        rsp = assoc.send_c_echo()
    finally:
        assoc.release()
    status = getattr(rsp, "Status", None)
    return status == 0, f"C-ECHO status {status}", status


def wait_healthy(
    name: str,
    target: tuple[str, str, int],
    status: Callable[[], ServiceStatus],
    log_tail: Callable[[], str],
    *,
    log_where: str,
    timeout: float = 60.0,
    poll: float = 0.25,
    setting: str = "deploy.start_timeout",
) -> float:
    """C-ECHO ``target`` until it answers; returns the seconds it took.

    ``status`` reports the supervisor's view: a process that exits at start fails at
    once (a deploy that crashes is a failed deploy, not something to wait out). A
    service whose log still moves at ``timeout`` (an index being built, a slow import)
    is still starting: it gets more time, up to three times ``timeout``. On failure
    raises :class:`ServiceCheckError` with the end of the service's log and, when time
    ran out, the ``setting`` that gives more.
    """
    aet, host, port = target
    started = time.monotonic()
    deadline, hard = started + timeout, started + PROGRESS_CAP * timeout
    watch = LogWatch(log_tail)
    last = "no answer"
    dicom_status: int | None = None
    timed_out = False
    while True:
        st = status()
        if not st.active or st.state in ("failed", "exited", "stopped", "dead"):
            last = f"process {st.state} (last exit {st.last_exit})"
            break
        if st.last_exit is not None:
            # it died since this start (the supervisor is backing off)
            last = f"process exited at start ({exit_text(st.last_exit)})"
            break
        ok, last, dicom_status = c_echo(aet, host, port)
        if ok:
            return time.monotonic() - started
        now = time.monotonic()
        watch.look(now)
        if now > deadline:
            if now < hard and watch.moved_within(now, LOG_QUIET_S):
                deadline = now + LOG_QUIET_S  # still making progress: not dead yet
            else:
                timed_out = True
                break
        time.sleep(poll)
    hint = ""
    if timed_out:
        if watch.moved_within(time.monotonic(), LOG_QUIET_S):
            hint = f"; still writing its log at {PROGRESS_CAP:g} times the timeout"
        elif watch.changed_at is not None:
            hint = "; its log stopped changing"
        else:
            hint = "; its log did not change while waiting"
        hint += (f"; a slow or busy machine: raise {setting} (now {timeout:g}s) in the "
                 "blueprint")
    raise ServiceCheckError(
        f"{name}: health check failed: C-ECHO {aet}@{host}:{port}: {last} "
        f"after {time.monotonic() - started:.1f}s{hint}; end of its log ({log_where}):\n"
        f"{log_tail()}",
        dicom_status,
    )
