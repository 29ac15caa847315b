"""A host's marks, as one snapshot shows them: the machine pacsinfra made of it, its services."""

from __future__ import annotations

from typing import Any

from pacsinfra.services.common import is_running, observed_service, parse_config
from pacsinfra.services.marks import decode_mark
from pacsinfra.services.remote.session import MARK_FORMAT
from pacsinfra.services.remote.settings import HostSettings
from pacsinfra.services.supervisor import ServiceStatus
from pacsinfra.specs import Observed, PowerState, ServiceSpec


def observe_host(host: HostSettings, snap: dict[str, Any]) -> tuple[Observed | None, list[Observed]]:
    """The host's machine mark and its services (config file as on the host, running or not).

    No machine mark means pacsinfra has nothing there: no services either.
    """
    files: dict[str, str] = snap.get("files") or {}
    status: dict[str, Any] = snap.get("status") or {}
    text = files.get(host.machine_mark)
    found = decode_mark(text, MARK_FORMAT) if text is not None else None
    if found is None:
        return None, []
    mspec, owner = found
    machine = Observed(spec=mspec, id=f"{host.address}:{host.root}", owner=owner,
                       power=PowerState.ON)
    services: list[Observed] = []
    for path, body in sorted(files.items()):
        if not path.endswith("/service.json"):
            continue
        got = decode_mark(body, MARK_FORMAT)
        if got is None or not isinstance(got[0], ServiceSpec):
            continue
        sspec, sowner = got
        assert isinstance(sspec, ServiceSpec)
        svc_dir = path[: -len("/service.json")]
        config = parse_config(files.get(f"{svc_dir}/config.yaml"))
        st = status.get(sspec.service) or {}
        running = is_running(ServiceStatus.from_dict(st)) if st else False
        services.append(Observed(
            spec=observed_service(sspec, config, running), id=f"{host.address}:{svc_dir}",
            owner=sowner, power=PowerState.ON if running else PowerState.OFF))
    return machine, services
