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


def _web(**dicomweb: Any) -> dict[str, Any]:
    return {**archive("ARCH_A", 2001), "dicomweb": {"port": 18042, **dicomweb}}


def test_the_deleter_uses_a_delete_scoped_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PX_READ_TOKEN", "read-only-token-0123456789")
    monkeypatch.setenv("PX_OPS_TOKEN", "ops-token-with-delete-0123")
    ep = site_endpoints([("service.a[0]", "archive", _web(tokens=[
        {"token": {"env": "PX_READ_TOKEN"}, "scopes": ["read"]},
        {"token": {"env": "PX_OPS_TOKEN"}, "scopes": ["read", "delete"], "name": "ops"}]))])
    deleter = ep.deleters["ARCH_A"]
    assert deleter.base_url == "http://127.0.0.1:18042"
    assert deleter._headers == {"Authorization": "Bearer ops-token-with-delete-0123"}
    # the legacy single token holds every scope
    monkeypatch.setenv("PX_ALL", "legacy-token-0123456789")
    ep = site_endpoints([("service.a[0]", "archive", _web(token={"env": "PX_ALL"}))])
    assert ep.deleters["ARCH_A"]._headers == {"Authorization": "Bearer legacy-token-0123456789"}


def test_no_deleter_without_a_way_to_delete(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PX_READ_TOKEN", "read-only-token-0123456789")
    ep = site_endpoints([("service.a[0]", "archive", _web(tokens=[
        {"token": {"env": "PX_READ_TOKEN"}, "scopes": ["read"]}]))])
    assert ep.deleters == {} and any("delete scope" in n for n in ep.notes)
    # loopback without tokens: anonymous callers may read and store, not delete
    ep = site_endpoints([("service.a[0]", "archive", _web())])
    assert ep.deleters == {} and any("delete scope" in n for n in ep.notes)
    # a rendered config that binds a network address without authentication is invalid
    ep = site_endpoints([("service.a[0]", "archive", _web(bind="0.0.0.0"))])
    assert ep.deleters == {} and any("invalid" in n for n in ep.notes)


def test_an_unreadable_token_fails_the_delete_step_and_says_why(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The archive has a delete API; only its token cannot be read here: verify's delete step
    fails naming the reference (never "no delete API known")."""
    from pacsinfra.verify.smoke import SmokeReport, _timed

    monkeypatch.delenv("PX_UNSET_TOKEN", raising=False)
    ep = site_endpoints([("service.a[0]", "archive", _web(token={"env": "PX_UNSET_TOKEN"}))])
    deleter = ep.deleters["ARCH_A"]
    report = SmokeReport(study_uid="1.2.3")
    _timed(report, "delete", "ARCH_A", lambda: ("PASS", deleter.delete_study("1.2.3")))
    step = report.steps[-1]
    assert step.result == "FAIL", step
    assert "PX_UNSET_TOKEN" in step.detail and "token" in step.detail, step.detail
    assert "no delete API" not in step.detail
