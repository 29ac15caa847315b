"""vCenter as the handlers see it: one connection (opened on first use) and the inventory.

Settings (``provider.vsphere``, declared in :mod:`.declaration`; a model or a Mapping):
``server`` (``vc.example``, ``host:port`` or ``https://host:port/sdk``), ``user``,
``password`` (a secret reference, resolved at connect only), ``insecure`` (TLS is
verified unless true), ``ca_file``; ``datacenter``, ``cluster``, ``resource_pool``,
``folder`` (``a/b``, created when missing), ``datastore`` (the cluster's first);
``task_timeout``, ``connections`` (pooled HTTP connections, 16).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from pacsinfra.drivers.settings import setting
from pacsinfra.drivers.vsphere.client import Endpoint, VsphereClient
from pacsinfra.drivers.vsphere.inventory import Inventory
from pacsinfra.errors import AlreadyExists, ConnectError, SecretError
from pacsinfra.secrets import SecretRef
from pacsinfra.specs import Observed


def secret(value: Any) -> SecretRef | None:
    """``password`` as a secret reference (a literal is refused: never in a blueprint)."""
    if value is None or isinstance(value, SecretRef):
        return value
    if isinstance(value, Mapping):
        return SecretRef(**value)
    raise SecretError("vsphere: password must be a secret reference ({env: ...} or {file: ...}), "
                      "not a literal")


def refuse_unowned(observed: Observed, what: str) -> None:
    """Refuse to ``what`` an object that does not carry pacsinfra's mark."""
    if observed.owner is None:
        raise AlreadyExists(f"vsphere: {observed.spec.name} carries no pacsinfra mark; "
                            f"refusing to {what} it")


class VsphereHost:
    """The vCenter connection and inventory shared by the handlers."""

    def __init__(self, config: Any, client: Any = None) -> None:
        self.config = config
        self._si = client  # a ServiceInstance passed in (tests): used as it is
        self._vc: VsphereClient | None = None
        self._inv: Inventory | None = None
        self._lock = threading.Lock()

    def connect(self) -> None:
        with self._lock:
            if self._vc is not None:
                return
            timeout = float(setting(self.config, "task_timeout", 600))
            if self._si is not None:
                vc = VsphereClient(si=self._si, task_timeout=timeout)
            else:
                server = setting(self.config, "server")
                if not server:
                    raise ConnectError("vsphere: provider.vsphere.server is not set")
                endpoint = Endpoint.parse(
                    str(server), user=str(setting(self.config, "user", "")),
                    insecure=bool(setting(self.config, "insecure", False)),
                    ca_file=setting(self.config, "ca_file"))
                ref = secret(setting(self.config, "password"))
                vc = VsphereClient(endpoint, ref.resolve if ref else None, task_timeout=timeout)
                vc.connect()
                # More pooled HTTP connections than pyVmomi's default 5: applies run in parallel.
                vc.si._stub.poolSize = int(setting(self.config, "connections", 16))
            self._inv = Inventory(vc, self.config)
            self._vc = vc

    def close(self) -> None:
        with self._lock:
            vc, self._vc, self._inv = self._vc, None, None
        if vc is not None:
            vc.close()

    @property
    def client(self) -> VsphereClient:
        """The connected client (connecting on first use)."""
        if self._vc is None:
            self.connect()
        assert self._vc is not None
        return self._vc

    @property
    def inventory(self) -> Inventory:
        """The datacenter's inventory (connecting on first use)."""
        if self._inv is None:
            self.connect()
        assert self._inv is not None
        return self._inv
