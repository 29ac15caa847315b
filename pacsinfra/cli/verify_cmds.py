"""``pacsinfra verify BLUEPRINT``: the smoke test of an applied site, from its state.

Sends a synthetic study through the router (or to the archive when there is none),
waits for it in every archive the router's rules send it to, C-FINDs it at study,
series and image level, C-MOVEs it to a temporary receiver, compares checksums and
opens it in every viewer of the site (through the viewer's own proxy and login, on the
viewer's host) and removes it unless ``--keep`` (``pacsinfra archive delete`` on the
archive's host; SKIP where the archive has no delete). Prints a table
of steps with their latencies; exit 0 when every step passed (SKIPs do not fail),
1 otherwise, 2 for bad input (an unapplied site, no receiver declared).
"""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command()
@click.argument("blueprint", type=click.Path(path_type=Path))
@click.option("--site", "overlay", help="overlay (sites.NAME) the site was applied with")
@click.option("--state", "state_path", type=click.Path(path_type=Path), help="state file")
@click.option("--keep", is_flag=True, help="leave the test study in the archives")
@click.option("--json", "as_json", is_flag=True, help="the report as JSON")
@click.option("--receiver-ae", default="PXVERIFY", show_default=True,
              help="the archives' C-MOVE destination to receive on")
@click.option("--receiver-bind", metavar="ADDRESS",
              help="listen for the C-MOVE here instead of at the address the archives know "
                   "(when a NAT is between them and this machine: e.g. 127.0.0.1 for a QEMU "
                   "user-networking guest, which reaches it as 10.0.2.2)")
@click.option("--wait", default=60.0, show_default=True, help="seconds to wait for arrival")
def verify(blueprint: Path, overlay: str | None, state_path: Path | None, keep: bool,
           as_json: bool, receiver_ae: str, receiver_bind: str | None, wait: float) -> None:
    """Store, find, move back and compare a synthetic study on an applied site."""
    from pacsinfra.verify.hosts import HostDeleter, open_site, viewer_step
    from pacsinfra.verify.site import site_endpoints
    from pacsinfra.verify.smoke import SKIP, run_smoke

    with open_site(blueprint, overlay, state_path,
                   fallback="python -m pacsinfra.verify smoke --entry AE@host:port") as site:
        def deleter_for(address: str) -> HostDeleter | None:
            runner = site.runner(address)
            return None if runner is None else HostDeleter(runner, site.specs[address].name)

        ep = site_endpoints(site.services, receiver_ae=receiver_ae, deleter_for=deleter_for)
        viewers = []
        for address, kind, config, _ in site.services:
            runner = site.runner(address) if kind == "viewer" else None
            if runner is not None:
                viewers.append((site.specs[address].name, viewer_step(runner, config)))
            elif kind == "viewer":
                ep.notes.append(f"{address}: its host cannot be reached to open the study")
        report = run_smoke(ep.entry, ep.archives, receiver_ae=ep.receiver.ae_title,
                           receiver_host=receiver_bind or ep.receiver.host,
                           receiver_port=ep.receiver.port, wait_timeout=wait,
                           deleters={} if keep else ep.deleters, viewers=viewers)
    site_name = site.name
    if keep:
        for step in report.steps:
            if step.name == "delete" and step.result == SKIP:
                step.detail = "kept (--keep)"
    if as_json:
        out = report.to_dict()
        out["entry"] = ep.entry_address
        out["archives"] = ep.archive_addresses
        out["notes"] = ep.notes
        click.echo(json.dumps(out, indent=2))
    else:
        click.echo(f"verify {site_name}: through {ep.entry_address} "
                   f"({ep.entry.ae_title}@{ep.entry.host}:{ep.entry.port}) to "
                   + ", ".join(ep.archive_addresses))
        for note in ep.notes:
            click.echo(f"note: {note}")
        click.echo(report.table())
    if not report.ok:
        raise click.exceptions.Exit(1)
