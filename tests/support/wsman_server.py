"""A WS-Management endpoint on loopback, speaking the part of the protocol pywinrm uses.

HTTP POST /wsman with basic auth (401 otherwise). SOAP actions:

* transfer/Create  -> a shell (``<w:Selector Name="ShellId">``)
* shell/Command    -> runs ``powershell ... -EncodedCommand <base64 UTF-16LE>`` through the
                      ``runner`` (the Hyper-V model), answers a CommandId
* shell/Receive    -> the output in two answers: stdout while ``Running``, then stderr
                      and ``CommandState/Done`` with the ExitCode (base64 streams)
* shell/Signal, transfer/Delete -> answered with ``RelatesTo`` = the request's MessageID
  (pywinrm asserts it)

Unknown shells or commands get a SOAP fault (HTTP 500, ``w:InvalidSelectors``); a test can
queue a fault for the next request (``fault_next``) or break ``RelatesTo`` (``bad_relates_to``).
"""

from __future__ import annotations

import base64
import socket
import threading
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from xml.etree import ElementTree as ET
from xml.sax.saxutils import escape

NS = {
    "s": "http://www.w3.org/2003/05/soap-envelope",
    "a": "http://schemas.xmlsoap.org/ws/2004/08/addressing",
    "w": "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd",
    "rsp": "http://schemas.microsoft.com/wbem/wsman/1/windows/shell",
}
SHELL = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell"
TRANSFER = "http://schemas.xmlsoap.org/ws/2004/09/transfer"
Runner = Callable[[str], tuple[int, bytes, bytes]]


def envelope(action: str, relates_to: str, body: str) -> bytes:
    return (
        f'<s:Envelope xmlns:s="{NS["s"]}" xmlns:a="{NS["a"]}" xmlns:w="{NS["w"]}" xmlns:rsp="{NS["rsp"]}">'
        f"<s:Header><a:Action>{action}</a:Action><a:MessageID>uuid:{uuid.uuid4()}</a:MessageID>"
        f"<a:RelatesTo>{relates_to}</a:RelatesTo></s:Header><s:Body>{body}</s:Body></s:Envelope>"
    ).encode()


def fault(relates_to: str, subcode: str, reason: str, wsman_code: int) -> bytes:
    body = (
        f'<s:Fault><s:Code><s:Value>s:Sender</s:Value><s:Subcode><s:Value>{subcode}</s:Value></s:Subcode>'
        f'</s:Code><s:Reason><s:Text xml:lang="en-US">{escape(reason)}</s:Text></s:Reason><s:Detail>'
        f'<f:WSManFault xmlns:f="http://schemas.microsoft.com/wbem/wsman/1/wsmanfault" Code="{wsman_code}">'
        f"<f:Message>{escape(reason)}</f:Message></f:WSManFault></s:Detail></s:Fault>"
    )
    return envelope("http://schemas.dmtf.org/wbem/wsman/1/wsman/fault", relates_to, body)


def decode_command(command: str, arguments: list[str]) -> str:
    """The PowerShell script of ``powershell [...] -EncodedCommand <b64>`` (in either form)."""
    words = command.split() + " ".join(arguments).split()
    for i, w in enumerate(words[:-1]):
        if w.lower() in ("-encodedcommand", "-e", "-ec"):
            return base64.b64decode(words[i + 1]).decode("utf-16-le")
    raise ValueError("no -EncodedCommand")


class WsmanServer:
    """The endpoint: ``with WsmanServer(runner, user, password) as srv: srv.url``."""

    def __init__(self, runner: Runner, user: str, password: str, *, port: int = 0) -> None:
        self.runner, self.user, self.password = runner, user, password
        self.shells: dict[str, dict[str, dict[str, Any]]] = {}  # shell -> command id -> result
        self.actions: list[str] = []  # the action of every authenticated request, in order
        self.fault_next: tuple[str, str, int] | None = None  # (subcode, reason, wsman code)
        self.bad_relates_to = False
        self.auth_failures = 0
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        # a short poll interval: shutdown() waits for it (0.5 s by default) in every teardown
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/wsman"

    def __enter__(self) -> WsmanServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # -- one SOAP request ------------------------------------------------------------
    def handle(self, xml: bytes) -> tuple[int, bytes]:
        root = ET.fromstring(xml)
        action = root.findtext("s:Header/a:Action", "", NS).strip()
        msg_id = root.findtext("s:Header/a:MessageID", "", NS).strip()
        shell_id = root.findtext("s:Header/w:SelectorSet/w:Selector[@Name='ShellId']", "", NS).strip()
        with self.lock:
            self.actions.append(action.rsplit("/", 1)[-1])
            if self.fault_next is not None:
                subcode, reason, code = self.fault_next
                self.fault_next = None
                return 500, fault(msg_id, subcode, reason, code)
            if action == f"{TRANSFER}/Create":
                sid = str(uuid.uuid4()).upper()
                self.shells[sid] = {}
                body = (f"<x:ResourceCreated xmlns:x=\"{TRANSFER}\"><a:Address>{self.url}</a:Address>"
                        f"<a:ReferenceParameters><w:SelectorSet><w:Selector Name=\"ShellId\">{sid}</w:Selector>"
                        "</w:SelectorSet></a:ReferenceParameters></x:ResourceCreated>"
                        f"<rsp:Shell><rsp:ShellId>{sid}</rsp:ShellId></rsp:Shell>")
                return 200, envelope(f"{TRANSFER}/CreateResponse", msg_id, body)
            commands = self.shells.get(shell_id)
            if commands is None:
                return 500, fault(msg_id, "w:InvalidSelectors", f"shell {shell_id or '(none)'} not found", 2150858843)
            relates = "uuid:00000000-0000-0000-0000-000000000000" if self.bad_relates_to else msg_id
            if action == f"{TRANSFER}/Delete":
                del self.shells[shell_id]
                return 200, envelope(f"{TRANSFER}/DeleteResponse", relates, "")
            body_el = root.find("s:Body", NS)
            assert body_el is not None
            if action == f"{SHELL}/Command":
                command = body_el.findtext("rsp:CommandLine/rsp:Command", "", NS)
                args = [body_el.findtext("rsp:CommandLine/rsp:Arguments", "", NS)]
                cid = str(uuid.uuid4()).upper()
                try:
                    code, out, err = self.runner(decode_command(command, args))
                except ValueError as exc:
                    code, out, err = 1, b"", f"cannot run {command!r}: {exc}".encode()
                commands[cid] = {"code": code, "out": out, "err": err, "receives": 0}
                body = f"<rsp:CommandResponse><rsp:CommandId>{cid}</rsp:CommandId></rsp:CommandResponse>"
                return 200, envelope(f"{SHELL}/CommandResponse", msg_id, body)
            if action == f"{SHELL}/Receive":
                cid = body_el.find("rsp:Receive/rsp:DesiredStream", NS)
                cmd = commands.get(cid.get("CommandId", "") if cid is not None else "")
                if cmd is None:
                    return 500, fault(msg_id, "w:InvalidSelectors", "command not found", 2150858843)
                cmd["receives"] += 1
                c = cmd_id = cid.get("CommandId") if cid is not None else ""
                if cmd["receives"] == 1:  # first answer: stdout, still running
                    streams = _stream("stdout", c, cmd["out"])
                    state = f'<rsp:CommandState CommandId="{c}" State="{SHELL}/CommandState/Running"/>'
                else:
                    streams = _stream("stderr", c, cmd["err"]) + _stream("stdout", c, b"", end=True)
                    state = (f'<rsp:CommandState CommandId="{cmd_id}" State="{SHELL}/CommandState/Done">'
                             f"<rsp:ExitCode>{cmd['code']}</rsp:ExitCode></rsp:CommandState>")
                body = f"<rsp:ReceiveResponse>{streams}{state}</rsp:ReceiveResponse>"
                return 200, envelope(f"{SHELL}/ReceiveResponse", msg_id, body)
            if action == f"{SHELL}/Signal":
                return 200, envelope(f"{SHELL}/SignalResponse", relates, "<rsp:SignalResponse/>")
            return 500, fault(msg_id, "a:ActionNotSupported", f"action {action} not supported", 2150858754)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self
        expected = "Basic " + base64.b64encode(f"{self.user}:{self.password}".encode()).decode()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                # headers and body go out in separate writes: without this, Nagle + delayed
                # ACK add ~40 ms to every SOAP round trip
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                data = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.path.rstrip("/") != "/wsman":
                    self._send(404, b"")
                    return
                if self.headers.get("Authorization") != expected:
                    server.auth_failures += 1
                    self._send(401, b"", {"WWW-Authenticate": 'Basic realm="WSMAN"'})
                    return
                status, body = server.handle(data)
                self._send(status, body, {"Content-Type": "application/soap+xml;charset=UTF-8"})

            def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler


def _stream(name: str, command_id: str, data: bytes, *, end: bool = False) -> str:
    text = base64.b64encode(data).decode() if data else ""
    tail = ' End="true"' if end else ""
    return f'<rsp:Stream Name="{name}" CommandId="{command_id}"{tail}>{text}</rsp:Stream>'


USER, PASSWORD = "hv-admin", "s3cret-Pa55!"


def basic_session(url: str, user: str = USER, password: str = PASSWORD) -> Any:
    """A real ``winrm.Session`` speaking basic auth over HTTP to a loopback endpoint."""
    import winrm

    return winrm.Session(url, auth=(user, password), transport="basic", read_timeout_sec=30, ca_trust_path=None,
                         operation_timeout_sec=20)
