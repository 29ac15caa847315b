"""Which endpoints ``pacsinfra verify`` picks from the deployed services' configs."""

from __future__ import annotations

from typing import Any

import pytest

from pacsinfra.errors import UsageError
from pacsinfra.verify.site import site_endpoints


def archive(aet: str, port: int, receiver: int | None = 11199) -> dict[str, Any]:
    peers = {"PXVERIFY": {"ae_title": "PXVERIFY", "host": "127.0.0.1", "port": receiver}}
    return {"ae_title": aet, "port": port, "bind": "127.0.0.1",
            "peers": peers if receiver else {}}


def router(rules: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"ae_title": "ROUTER", "port": 11104, "bind": "0.0.0.0", "rules": rules,
            "destinations": {
                "a": {"ae_title": "ARCH_A", "host": "127.0.0.1", "port": 2001},
                "b": {"ae_title": "ARCH_B", "host": "127.0.0.1", "port": 2002},
                "ext": {"ae_title": "OTHER", "host": "127.0.0.1", "port": 2999}},
            **extra}


def test_router_rules_choose_the_archives() -> None:
    rules = [{"name": "ct", "match": {"tag": "Modality", "equals": "CT"}, "forward": ["a", "ext"]},
             {"name": "mr", "match": {"tag": "Modality", "equals": "MR"}, "forward": ["b"]}]
    ep = site_endpoints([("service.router[0]", "router", router(rules)),
                         ("service.a[0]", "archive", archive("ARCH_A", 2001)),
                         ("service.b[0]", "archive", archive("ARCH_B", 2002))])
    assert (ep.entry.ae_title, ep.entry.host, ep.entry.port) == ("ROUTER", "127.0.0.1", 11104)
    assert ep.archive_addresses == ["service.a[0]"]  # the synthetic study is a CT
    assert ep.receiver.port == 11199
    assert any("'ext'" in n for n in ep.notes)


def test_groups_are_noted_and_no_archive_is_an_error() -> None:
    rules = [{"name": "all", "forward": ["pool"]}]
    cfg = router(rules, groups={"pool": {"members": ["a", "b"]}})
    with pytest.raises(UsageError, match="no archive"):
        site_endpoints([("service.router[0]", "router", cfg),
                        ("service.a[0]", "archive", archive("ARCH_A", 2001))])


def test_missing_receiver_says_what_to_add() -> None:
    with pytest.raises(UsageError, match=r"peers\.PXVERIFY"):
        site_endpoints([("service.a[0]", "archive", archive("ARCH_A", 2001, receiver=None))])


def test_without_router_every_archive_is_checked() -> None:
    ep = site_endpoints([("service.a[0]", "archive", archive("ARCH_A", 2001)),
                         ("service.a[1]", "archive", archive("ARCH_A2", 2003))])
    assert ep.entry_address == "service.a[0]"
    assert ep.archive_addresses == ["service.a[0]", "service.a[1]"]
