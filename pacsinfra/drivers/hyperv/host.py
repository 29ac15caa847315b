"""The Hyper-V host as the handlers see it: one WinRM session and what the host reported.

Settings (``provider.hyperv``, declared in :mod:`.declaration`; read and checked by
:func:`~.config.read_settings`): the connection (``host``, ``port``, ``transport``,
``user``, ``password`` as a secret reference resolved at connect only, ``ssl``,
``verify_ssl``, ``ca_file``) and the placement defaults (``vm_path``, ``storage_root``,
``host_mhz``, ``shutdown_timeout``). Every operation renders one script
(:func:`~.scripts.render`) and runs it through the one :class:`~.client.HypervClient`.
"""

from __future__ import annotations

import threading
from typing import Any

from pacsinfra.drivers.hyperv import vm as mach
from pacsinfra.drivers.hyperv.client import HypervClient, open_session
from pacsinfra.drivers.hyperv.config import HypervSettings, read_settings
from pacsinfra.drivers.hyperv.scripts import Script, render
from pacsinfra.errors import AlreadyExists, AuthError
from pacsinfra.specs import Observed, Ownership, Spec


class HypervHost:
    """The WinRM session, opened on first use, and the host's facts."""

    def __init__(self, config: Any, client: Any = None) -> None:
        self.config = config
        self.settings: HypervSettings = read_settings(config)
        self._session = client  # a winrm.Session-like object passed in (tests)
        self._hc: HypervClient | None = None
        self._facts: dict[str, Any] = {}
        self._lock = threading.Lock()

    def connect(self) -> None:
        """Open the WinRM session (the password is resolved here, never earlier) and read
        the host."""
        with self._lock:
            if self._hc is not None:
                return
            s = self.settings
            session = self._session
            if session is None:
                ref = s.password_ref()
                if ref is None or not s.user:
                    raise AuthError("hyperv: provider.hyperv.user and password are required")
                session = open_session(s.endpoint, s.user, ref.resolve(), transport=s.transport,
                                       verify=s.verify_ssl, ca_file=s.ca_file)
            hc = HypervClient(session, s.endpoint if self._session is None else "")
            self._facts = dict(hc.run(render("host-info", {})))
            self._hc = hc

    def close(self) -> None:
        """Forget the session (WinRM shells are closed after every script)."""
        with self._lock:
            self._hc = None

    @property
    def hc(self) -> HypervClient:
        if self._hc is None:
            self.connect()
        assert self._hc is not None
        return self._hc

    def run(self, name: str, parameters: dict[str, Any]) -> Any:
        """Render and run one script; its JSON result."""
        return self.hc.run(render(name, parameters))

    def run_script(self, script: Script) -> Any:
        return self.hc.run(script)

    @property
    def facts(self) -> dict[str, Any]:
        """What host-info reported (empty before connect)."""
        return dict(self._facts)

    def context(self) -> mach.HostContext:
        """Host clock (configured, else reported), storage root and VM path."""
        mhz = self.settings.host_mhz or (int(self._facts["mhz"]) if self._facts.get("mhz") else None)
        return mach.HostContext(host_mhz=mhz, storage_root=self.settings.storage_root,
                                vm_path=self.settings.vm_path)


def claim(spec: Spec, found: Observed | None, owner: Ownership) -> bool:
    """True when ``found`` is already ours for ``owner``; raise when the name is taken."""
    if found is None:
        return False
    if found.owner is not None and (found.owner.site, found.owner.address) == (
            owner.site, owner.address):
        return True
    whose = (f"owned by {found.owner.site} {found.owner.address}" if found.owner
             else "not created by pacsinfra")
    raise AlreadyExists(f"hyperv: {spec.name} already exists ({whose})")


def pick(found: list[Observed], address: str) -> Observed | None:
    """The object marked for ``address``, else any marked one, else the first (unowned) one."""
    for o in found:
        if o.owner is not None and o.owner.address == address:
            return o
    for o in found:
        if o.owner is not None:
            return o
    return found[0] if found else None


def refuse_unowned(observed: Observed, what: str) -> None:
    """Refuse to change or delete what pacsinfra did not make."""
    if observed.owner is None:
        raise AlreadyExists(f"hyperv: {observed.spec.name} is not owned by pacsinfra; "
                            f"refusing to {what} it")
