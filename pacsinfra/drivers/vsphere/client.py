"""The only module that talks to vSphere: connection, session, faults, task waits, lookups.

Everything pyVmomi raises is translated here, in one table (:data:`FAULT_MAP`),
most specific class first, chained with ``from exc``; nothing matches on text.
Waits use the task object and a private PropertyCollector's ``WaitForUpdatesEx``
with a deadline (no sleep loops); each wait has its own collector, so waits in
parallel threads never see each other's updates.

TLS verification is on by default (the system trust store, or ``ca_file``);
``insecure=True`` turns it off and must be asked for explicitly.
"""

from __future__ import annotations

import http.client
import json
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

from pyVim.connect import Disconnect, SmartConnect
from pyVmomi import SoapStubAdapter, pbm, vim, vmodl

from pacsinfra.errors import (
    AlreadyExists,
    AuthError,
    ConnectError,
    DriverError,
    NotFound,
    PacsinfraError,
    TaskFailed,
)

T = TypeVar("T")


class PowerStateConflict(TaskFailed):
    """The machine is in the wrong power state for the request (vim.fault.InvalidPowerState)."""


# Most specific first: the first class the fault is an instance of decides.
FAULT_MAP: tuple[tuple[type[BaseException], type[DriverError]], ...] = (
    (vim.fault.InvalidLogin, AuthError),
    (vim.fault.NotAuthenticated, AuthError),
    (vim.fault.NoPermission, AuthError),
    (vim.fault.InvalidPowerState, PowerStateConflict),
    (vim.fault.DuplicateName, AlreadyExists),
    (vim.fault.AlreadyExists, AlreadyExists),
    (pbm.fault.DuplicateName, AlreadyExists),
    (vmodl.fault.ManagedObjectNotFound, NotFound),
    (vim.fault.NotFound, NotFound),
    (pbm.fault.NotFound, NotFound),
    (ssl.SSLCertVerificationError, ConnectError),
    (ssl.SSLError, ConnectError),
    (http.client.HTTPException, ConnectError),
    (ConnectionError, ConnectError),
    (TimeoutError, ConnectError),
    (OSError, ConnectError),
    (vmodl.MethodFault, TaskFailed),
)


def _fault_text(exc: BaseException) -> str:
    msg = getattr(exc, "msg", None) or getattr(exc, "localizedMessage", None) or str(exc)
    name = type(exc).__name__
    qual = getattr(type(exc), "_wsdlName", name)
    return f"{qual}: {msg}".strip().rstrip(":")


def translate(exc: BaseException, action: str) -> PacsinfraError:
    """The pacsinfra error for a pyVmomi / transport exception (the caller raises it ``from exc``)."""
    if isinstance(exc, PacsinfraError):
        return exc
    for cls, err in FAULT_MAP:
        if isinstance(exc, cls):
            if isinstance(exc, ssl.SSLCertVerificationError):
                return err(
                    f"{action}: TLS certificate not trusted ({exc.verify_message}); "
                    "set ca_file to the vCenter CA, or insecure: true for a lab"
                )
            return err(f"{action}: {_fault_text(exc)}")
    return DriverError(f"{action}: {type(exc).__name__}: {exc}")


@contextmanager
def faults(action: str) -> Iterator[None]:
    """Translate anything pyVmomi raises inside the block into a pacsinfra error."""
    try:
        yield
    except PacsinfraError:
        raise
    except (vmodl.MethodFault, OSError, http.client.HTTPException) as exc:
        raise translate(exc, action) from exc


@dataclass(frozen=True)
class Endpoint:
    """Where and how to connect (no secret here: the password is resolved at login)."""

    host: str
    port: int = 443
    user: str = ""
    insecure: bool = False
    ca_file: str | None = None

    @classmethod
    def parse(cls, server: str, **kw: Any) -> Endpoint:
        """``vc.example``, ``vc.example:8443`` or ``https://vc.example:8443/sdk``."""
        text = server if "//" in server else f"//{server}"
        parts = urlsplit(text)
        if not parts.hostname:
            raise ConnectError(f"vsphere: invalid server {server!r}")
        return cls(host=parts.hostname, port=parts.port or 443, **kw)

    def ssl_context(self) -> ssl.SSLContext:
        """Verifying by default; unverified only when ``insecure`` was asked for."""
        if self.insecure:
            return ssl._create_unverified_context()  # noqa: S323 - explicit opt-in
        try:
            return ssl.create_default_context(cafile=self.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConnectError(f"vsphere: cannot load ca_file {self.ca_file}: {exc}") from exc


class VsphereClient:
    """A logged-in vSphere session with fault translation, re-login and task waits.

    ``password`` is a callable so the secret is read at login time only and never
    stored on this object.
    """

    def __init__(
        self,
        endpoint: Endpoint | None = None,
        password: Callable[[], str] | None = None,
        *,
        si: Any = None,
        task_timeout: float = 600.0,
    ) -> None:
        self.endpoint = endpoint
        self._password = password
        self._si = si
        self._owned = si is None  # we log out only sessions we opened
        self._lock = threading.Lock()
        self._content: Any = None
        self._pbm: Any = None
        self.task_timeout = task_timeout

    # -- session --------------------------------------------------------------------
    def connect(self) -> None:
        """Log in (no-op when a ServiceInstance was passed in or we are connected)."""
        if self._si is not None:
            return
        ep = self._need_endpoint()
        pwd = self._password() if self._password else ""
        try:
            self._si = SmartConnect(
                host=ep.host,
                port=ep.port,
                user=ep.user,
                pwd=pwd,
                sslContext=ep.ssl_context(),
                connectionPoolTimeout=60,
            )
        except PacsinfraError:
            raise
        except (vmodl.MethodFault, OSError, http.client.HTTPException) as exc:
            raise translate(exc, f"vsphere: connect to {ep.host}:{ep.port}") from exc
        self._owned = True

    def _need_endpoint(self) -> Endpoint:
        if self.endpoint is None:
            raise ConnectError("vsphere: no server configured")
        return self.endpoint

    def relogin(self) -> None:
        """Log in again on the same stub (the session expired or was terminated)."""
        ep = self._need_endpoint()
        pwd = self._password() if self._password else ""
        with self._lock, faults("vsphere: log in again"):
            self.content.sessionManager.Login(userName=ep.user, password=pwd)
            self._pbm = None

    def close(self) -> None:
        """Log out the session we opened."""
        si, self._si = self._si, None
        self._content = None
        self._pbm = None
        if si is not None and self._owned:
            try:
                Disconnect(si)
            except (vmodl.MethodFault, OSError, http.client.HTTPException):
                pass  # closing a dead session is not an error

    @property
    def si(self) -> Any:
        if self._si is None:
            self.connect()
        return self._si

    @property
    def content(self) -> Any:
        if self._content is None:
            with faults("vsphere: read service content"):
                self._content = self.si.RetrieveContent()
        return self._content

    def call(self, action: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call ``fn`` translating faults; log in again once on NotAuthenticated."""
        for attempt in (1, 2):
            try:
                return fn(*args, **kwargs)
            except vim.fault.NotAuthenticated as exc:
                if attempt == 2 or self.endpoint is None or self._password is None:
                    raise translate(exc, action) from exc
                self.relogin()
            except PacsinfraError:
                raise
            except (vmodl.MethodFault, OSError, http.client.HTTPException) as exc:
                raise translate(exc, action) from exc
        raise AssertionError("unreachable")

    # -- PBM --------------------------------------------------------------------------
    @property
    def pbm_content(self) -> Any:
        """The PBM service content, on the /pbm endpoint sharing this session's cookie."""
        if self._pbm is None:
            stub = self.si._stub
            host, port = self._stub_host_port(stub)
            ctx = stub.schemeArgs.get("context") if hasattr(stub, "schemeArgs") else None
            pstub = SoapStubAdapter(
                host=host,
                port=port,
                path="/pbm",
                version="pbm.version.version11",
                sslContext=ctx,
            )
            pstub.cookie = stub.cookie
            with faults("vsphere: open the PBM endpoint"):
                self._pbm = pbm.ServiceInstance("ServiceInstance", pstub).RetrieveContent()
        return self._pbm

    def _stub_host_port(self, stub: Any) -> tuple[str, int]:
        if self.endpoint is not None:
            return self.endpoint.host, self.endpoint.port
        host = str(getattr(stub, "host", "localhost:443"))
        name, _, port = host.rpartition(":")
        return (name or host).strip("[]"), int(port or 443)

    # -- tasks --------------------------------------------------------------------------
    def wait(self, task: Any, action: str, timeout: float | None = None) -> Any:
        """Wait for ``task`` through WaitForUpdatesEx; its result, or the translated fault."""
        return self.wait_all([task], action, timeout)[0]

    def wait_all(self, tasks: Sequence[Any], action: str, timeout: float | None = None) -> list[Any]:
        """Wait for every task (one private PropertyCollector); raise the first failure."""
        if not tasks:
            return []
        deadline = time.monotonic() + (self.task_timeout if timeout is None else timeout)
        pending = {t._moId: t for t in tasks}
        states: dict[str, Any] = {}
        with faults(action):
            collector = self.content.propertyCollector.CreatePropertyCollector()
        try:
            spec = vmodl.query.PropertyCollector.FilterSpec(
                objectSet=[vmodl.query.PropertyCollector.ObjectSpec(obj=t) for t in tasks],
                propSet=[
                    vmodl.query.PropertyCollector.PropertySpec(
                        type=vim.Task, pathSet=["info.state", "info.error", "info.result"]
                    )
                ],
            )
            self.call(action, collector.CreateFilter, spec, partialUpdates=False)
            version = ""
            while pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TaskFailed(f"{action}: timed out after {timeout or self.task_timeout:.0f}s")
                opts = vmodl.query.PropertyCollector.WaitOptions(maxWaitSeconds=max(1, int(min(left, 60))))
                update = self.call(action, collector.WaitForUpdatesEx, version, opts)
                if update is None:
                    continue
                version = update.version
                for fs in update.filterSet or ():
                    for obj in fs.objectSet or ():
                        info = states.setdefault(obj.obj._moId, {})
                        for change in obj.changeSet or ():
                            info[change.name] = change.val
                        if info.get("info.state") in ("success", "error"):
                            pending.pop(obj.obj._moId, None)
        finally:
            try:
                collector.DestroyPropertyCollector()
            except (vmodl.MethodFault, OSError, http.client.HTTPException):
                pass  # the session may be gone; the collector dies with it
        results = []
        for t in tasks:
            info = states[t._moId]
            if info.get("info.state") == "error":
                err = info.get("info.error")
                if isinstance(err, BaseException):
                    raise translate(err, action) from err
                raise TaskFailed(f"{action}: task failed")
            results.append(info.get("info.result"))
        return results

    def run(self, action: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Start a task with ``fn`` and wait for it."""
        task = self.call(action, fn, *args, **kwargs)
        return self.wait(task, action)

    # -- reading ------------------------------------------------------------------------
    def retrieve(
        self, root: Any, obj_type: Any, props: Iterable[str], *, recursive: bool = True
    ) -> list[tuple[Any, dict[str, Any]]]:
        """Properties of every ``obj_type`` under ``root``, in one RetrievePropertiesEx pass."""
        content = self.content
        view = self.call(
            "vsphere: list objects",
            content.viewManager.CreateContainerView,
            root,
            [obj_type],
            recursive,
        )
        try:
            pc = vmodl.query.PropertyCollector
            spec = pc.FilterSpec(
                objectSet=[
                    pc.ObjectSpec(
                        obj=view,
                        skip=True,
                        selectSet=[pc.TraversalSpec(path="view", skip=False, type=vim.view.ContainerView)],
                    )
                ],
                propSet=[pc.PropertySpec(type=obj_type, pathSet=list(props))],
            )
            out: list[tuple[Any, dict[str, Any]]] = []
            collector = content.propertyCollector
            result = self.call("vsphere: read properties", collector.RetrievePropertiesEx, [spec], pc.RetrieveOptions())
            while result is not None:
                for obj in result.objects or ():
                    out.append((obj.obj, {p.name: p.val for p in obj.propSet or ()}))
                if not result.token:
                    break
                result = self.call("vsphere: read properties", collector.ContinueRetrievePropertiesEx, result.token)
            return out
        finally:
            try:
                view.DestroyView()
            except (vmodl.MethodFault, OSError, http.client.HTTPException):
                pass

    def properties(self, obj: Any, props: Iterable[str]) -> dict[str, Any]:
        """Selected properties of one object (one round trip)."""
        pc = vmodl.query.PropertyCollector
        spec = pc.FilterSpec(
            objectSet=[pc.ObjectSpec(obj=obj, skip=False)],
            propSet=[pc.PropertySpec(type=type(obj), pathSet=list(props))],
        )
        result = self.call(
            f"vsphere: read {obj._moId}",
            self.content.propertyCollector.RetrievePropertiesEx,
            [spec],
            pc.RetrieveOptions(),
        )
        if result is None or not result.objects:
            raise NotFound(f"vsphere: {obj._moId} is gone")
        return {p.name: p.val for p in result.objects[0].propSet or ()}

    # -- pacsinfra marks kept in vCenter's advanced settings ----------------------------
    # Port groups and storage policies have nowhere to keep a custom attribute that vcsim
    # and vCenter both support, so their mark is an advanced setting config.pacsinfra.*.
    MARK_PREFIX = "config.pacsinfra."

    def read_marks(self, kind: str) -> dict[str, dict[str, Any]]:
        """Every ``config.pacsinfra.<kind>.<name>`` setting, parsed (empty values are deleted marks)."""
        prefix = f"{self.MARK_PREFIX}{kind}."
        try:
            values = self.content.setting.QueryOptions(name=prefix)
        except vim.fault.InvalidName:
            return {}
        except (vmodl.MethodFault, OSError, http.client.HTTPException) as exc:
            raise translate(exc, "vsphere: read pacsinfra marks") from exc
        out = {}
        for opt in values or ():
            if not opt.key.startswith(prefix) or not opt.value:
                continue
            try:
                data = json.loads(str(opt.value))
            except ValueError:
                continue  # not ours to interpret
            if isinstance(data, dict):
                out[opt.key[len(prefix) :]] = data
        return out

    def write_mark(self, kind: str, name: str, data: Mapping[str, Any] | None) -> None:
        """Set (or, with None, clear) the mark of one object."""
        value = json.dumps(dict(data), sort_keys=True) if data is not None else ""
        opt = vim.option.OptionValue(key=f"{self.MARK_PREFIX}{kind}.{name}", value=value)
        self.call("vsphere: write pacsinfra mark", self.content.setting.UpdateOptions, changedValue=[opt])

    def wait_property(self, obj: Any, prop: str, value: Any, timeout: float) -> bool:
        """Wait (WaitForUpdatesEx) until ``obj.prop == value``; False on timeout."""
        deadline = time.monotonic() + timeout
        action = f"vsphere: wait for {prop}"
        with faults(action):
            collector = self.content.propertyCollector.CreatePropertyCollector()
        try:
            pc = vmodl.query.PropertyCollector
            spec = pc.FilterSpec(
                objectSet=[pc.ObjectSpec(obj=obj)],
                propSet=[pc.PropertySpec(type=type(obj), pathSet=[prop])],
            )
            self.call(action, collector.CreateFilter, spec, partialUpdates=False)
            version = ""
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                opts = pc.WaitOptions(maxWaitSeconds=max(1, int(min(left, 60))))
                update = self.call(action, collector.WaitForUpdatesEx, version, opts)
                if update is None:
                    continue
                version = update.version
                for fs in update.filterSet or ():
                    for o in fs.objectSet or ():
                        for change in o.changeSet or ():
                            if change.name == prop and change.val == value:
                                return True
        finally:
            try:
                collector.DestroyPropertyCollector()
            except (vmodl.MethodFault, OSError, http.client.HTTPException):
                pass
