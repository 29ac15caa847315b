"""Every provider pacsinfra knows, by name: the one list the rest of the code reads.

A provider is a hypervisor driver (kvm, vsphere, hyperv: :mod:`pacsinfra.drivers`) or a
kind of host the services layer runs on directly (local, static:
:mod:`pacsinfra.services`). Each declares itself once
(:class:`~pacsinfra.drivers.declaration.Declaration`, a pure module); the blueprint
model, ``validate``, the planner, the JSON Schema and the docs all read the declarations
here, and :func:`make_provider` imports an implementation only when it is used, so a
missing optional SDK fails only for its own provider, with the install hint.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from pacsinfra.drivers.base import Capability, Driver
from pacsinfra.drivers.declaration import Declaration
from pacsinfra.drivers.fake.declaration import DECLARATION as FAKE
from pacsinfra.drivers.hyperv.declaration import DECLARATION as HYPERV
from pacsinfra.drivers.kvm.declaration import DECLARATION as KVM
from pacsinfra.drivers.vsphere.declaration import DECLARATION as VSPHERE
from pacsinfra.errors import DriverUnavailable, UsageError
from pacsinfra.services.local.declaration import DECLARATION as LOCAL
from pacsinfra.services.static.declaration import DECLARATION as STATIC

DECLARATIONS: dict[str, Declaration] = {
    d.name: d for d in (KVM, VSPHERE, HYPERV, LOCAL, STATIC, FAKE)}
#: the providers a blueprint can name (``provider.driver``)
NAMES: tuple[str, ...] = tuple(n for n, d in DECLARATIONS.items() if d.selectable)


def declaration(name: str) -> Declaration:
    """The declaration of provider ``name``; UsageError naming the known ones."""
    found = DECLARATIONS.get(name)
    if found is None:
        raise UsageError(f"unknown provider {name!r}; known providers: {', '.join(NAMES)}")
    return found


def that_can(capability: Capability) -> list[str]:
    """The providers that carry out ``capability`` (for hints)."""
    return [n for n in NAMES if DECLARATIONS[n].can(capability)]


def provider_class(name: str) -> type[Driver]:
    """The implementation of provider ``name``, imported now."""
    decl = declaration(name)
    if decl.sdk and importlib.util.find_spec(decl.sdk[0]) is None:
        raise DriverUnavailable(
            f"the {name} driver needs the {decl.sdk[0]} package, which is not installed; "
            f"install it with: pip install 'pacsinfra[{decl.sdk[1]}]'")
    module_name, _, attr = decl.implementation.partition(":")
    module = importlib.import_module(module_name)
    cls = getattr(module, attr)
    if not (isinstance(cls, type) and issubclass(cls, Driver)):
        raise TypeError(f"{decl.implementation} is not a Driver")
    return cls


def make_provider(name: str, settings: Any, *, client: Any = None, deploy: Any = None) -> Driver:
    """An instance of provider ``name`` built from its settings (no I/O until connect).

    ``deploy``: the blueprint's deploy settings, which the providers whose machines are
    existing hosts log in with.
    """
    cls = provider_class(name)
    if declaration(name).makes_machines:
        return cls(settings, client=client)
    return cls(settings, client=client, deploy=deploy)  # type: ignore[call-arg]

