"""How the Hyper-V client maps what pywinrm raises, over real HTTP(S) on loopback."""

from __future__ import annotations

import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import free_port, need_binary, need_module

need_module("winrm")

from support.hyperv_model import HypervHost  # noqa: E402
from support.wsman_server import PASSWORD, USER, WsmanServer, basic_session  # noqa: E402

from pacsinfra.drivers.hyperv.client import HypervClient, PowerShellFailed, WinRMFault  # noqa: E402
from pacsinfra.drivers.hyperv.driver import HypervDriver  # noqa: E402
from pacsinfra.drivers.hyperv.scripts import render  # noqa: E402
from pacsinfra.errors import AuthError, ConnectError, SecretError, TaskFailed  # noqa: E402
from pacsinfra.providers import make_provider  # noqa: E402

pytestmark = pytest.mark.integration


@pytest.fixture
def endpoint() -> Iterator[WsmanServer]:
    with WsmanServer(HypervHost().run, USER, PASSWORD) as srv:
        yield srv


def config(port: int, **kw: object) -> dict[str, object]:
    return {"host": "127.0.0.1", "port": port, "ssl": False, "transport": "basic", "user": USER,
            "password": {"env": "PACSINFRA_TEST_HV_PASSWORD"}, **kw}


def test_connect_resolves_the_secret_only_then(endpoint: WsmanServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PACSINFRA_TEST_HV_PASSWORD", raising=False)
    port = int(endpoint.url.split(":")[2].split("/")[0])
    drv = make_provider("hyperv", config(port))  # no I/O, no secret yet
    with pytest.raises(SecretError):
        drv.connect()
    monkeypatch.setenv("PACSINFRA_TEST_HV_PASSWORD", PASSWORD)
    with make_provider("hyperv", config(port)) as d:
        assert isinstance(d, HypervDriver) and d.host.facts["mhz"] == 2600


def test_wrong_password_is_an_auth_error_without_the_password(
    endpoint: WsmanServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = "Wr0ng-Secret-xyz"
    monkeypatch.setenv("PACSINFRA_TEST_HV_PASSWORD", wrong)
    port = int(endpoint.url.split(":")[2].split("/")[0])
    with pytest.raises(AuthError) as info:
        make_provider("hyperv", config(port)).connect()
    msg = str(info.value)
    assert "refused the credentials (HTTP 401)" in msg and "127.0.0.1" in msg
    assert wrong not in msg and PASSWORD not in msg
    assert endpoint.auth_failures == 1 and endpoint.actions == []


def test_nothing_listening_is_a_connect_error() -> None:
    port = free_port()
    drv = HypervDriver(config(port), client=basic_session(f"http://127.0.0.1:{port}/wsman"))
    with pytest.raises(ConnectError, match="cannot reach"):
        drv.connect()


@pytest.fixture
def tls_endpoint(tmp_path: Path) -> Iterator[tuple[WsmanServer, Path]]:
    need_binary("openssl")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                    "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    srv = WsmanServer(HypervHost().run, USER, PASSWORD)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert), str(key))
    srv.httpd.socket = ctx.wrap_socket(srv.httpd.socket, server_side=True)
    with srv:
        yield srv, cert


def test_untrusted_certificate_is_a_tls_connect_error(tls_endpoint: tuple[WsmanServer, Path]) -> None:
    import winrm

    srv, cert = tls_endpoint
    url = srv.url.replace("http://", "https://")
    session = winrm.Session(url, auth=(USER, PASSWORD), transport="basic", ca_trust_path=None)
    with pytest.raises(ConnectError, match="TLS handshake .* failed.*ca_file"):
        HypervDriver({"host": "127.0.0.1"}, client=session).connect()
    # with the CA that signed it, the same endpoint works
    trusted = winrm.Session(url, auth=(USER, PASSWORD), transport="basic", ca_trust_path=str(cert))
    drv = HypervDriver({"host": "127.0.0.1"}, client=trusted)
    drv.connect()
    assert drv.host.facts["logical_processors"] == 32


def test_wsman_faults_map_by_subcode(endpoint: WsmanServer) -> None:
    hc = HypervClient(basic_session(endpoint.url))
    endpoint.fault_next = ("w:QuotaLimit", "The WS-Management service cannot process the request: quota", 2150858924)
    with pytest.raises(WinRMFault) as info:
        hc.run(render("host-info", {}))
    assert isinstance(info.value, TaskFailed) and info.value.subcode == "w:QuotaLimit"
    assert info.value.wsman_code == 2150858924 and "quota" in str(info.value)
    endpoint.fault_next = ("w:AccessDenied", "Access is denied.", 5)
    with pytest.raises(AuthError, match="denied access"):
        hc.run(render("host-info", {}))
    assert hc.run(render("host-info", {}))["mhz"] == 2600  # the next request is fine


def test_malformed_relates_to_is_a_connect_error(endpoint: WsmanServer) -> None:
    endpoint.bad_relates_to = True
    with pytest.raises(ConnectError, match="malformed"):
        HypervClient(basic_session(endpoint.url)).run(render("host-info", {}))


def test_output_that_is_not_json_is_a_task_failure() -> None:
    def runner(script: str) -> tuple[int, bytes, bytes]:
        return 1, b"", b"#< CLIXML\r\n<Objs Version=\"1.1.0.1\" xmlns=\"http://schemas.microsoft.com/powershell/2004/04\"><S S=\"Error\">Get-VM : Hyper-V is not installed_x000D__x000A_</S></Objs>"

    with (
        WsmanServer(runner, USER, PASSWORD) as srv,
        pytest.raises(TaskFailed, match="exited with code 1 without a JSON result: Get-VM : Hyper-V is not installed"),
    ):
        HypervClient(basic_session(srv.url)).run(render("host-info", {}))


def test_structured_error_carries_cmdlet_and_line() -> None:
    def runner(script: str) -> tuple[int, bytes, bytes]:
        doc = b'{"error":{"type":"System.Management.Automation.ItemNotFoundException","message":"gone","cmdlet":"Get-VM","line":17,"category":"ObjectNotFound"}}\r\n'
        return 1, doc, b""

    with WsmanServer(runner, USER, PASSWORD) as srv, pytest.raises(PowerShellFailed) as info:
        HypervClient(basic_session(srv.url)).run(render("get-vm", {"name": "a", "mark_prefix": "p"}))
    e = info.value
    assert (e.script, e.cmdlet, e.line, e.category) == ("get-vm", "Get-VM", 17, "ObjectNotFound")
    assert str(e) == "hyperv: get-vm failed in Get-VM at line 17: gone"


def test_scripts_are_serialised_over_one_session(endpoint: WsmanServer) -> None:
    hc = HypervClient(basic_session(endpoint.url))
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(3):
                assert hc.run(render("host-info", {}))["host"] == "HV-MODEL"
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and hc.scripts_run == 9 and endpoint.shells == {}
