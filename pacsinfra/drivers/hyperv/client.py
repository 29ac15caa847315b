"""The only module that touches pywinrm: run one rendered script, map every error once.

A script runs as ``powershell -NoProfile -NonInteractive -EncodedCommand <base64 UTF-16LE>``
in a WinRM shell (Create -> Command -> Receive until Done -> Signal -> Delete), with
``WINRS_SKIP_CMD_SHELL`` so the 8191-character cmd.exe limit does not apply. A result is one
JSON document on stdout; a failure is exit code 1 and ``{"error": {...}}`` on stdout.

Error mapping (most specific first, chained with ``from exc``, never by matching text):

==============================================  =======================================
pywinrm / requests                              pacsinfra
==============================================  =======================================
``InvalidCredentialsError`` (HTTP 401)          :class:`AuthError` (no password in it)
``requests.exceptions.SSLError``                :class:`ConnectError` naming TLS
``requests.ConnectionError`` / ``Timeout``      :class:`ConnectError`
``WSManFaultError`` subcode ``w:AccessDenied``  :class:`AuthError`
``WSManFaultError`` other                       :class:`WinRMFault` (a :class:`TaskFailed`)
``WinRMTransportError`` (other HTTP status)     :class:`ConnectError`
script exit code != 0 with a JSON error         :class:`PowerShellFailed` (cmdlet, line)
script output that is not JSON                  :class:`TaskFailed`
==============================================  =======================================
"""

from __future__ import annotations

import base64
import json
import threading
from typing import Any

from pacsinfra.drivers.hyperv.scripts import Script
from pacsinfra.errors import AuthError, ConnectError, DriverError, TaskFailed

# WS-Management fault subcodes (DSP0226) that mean "who you are is not allowed".
_ACCESS_DENIED_SUBCODES = frozenset({"w:AccessDenied", "AccessDenied"})


class PowerShellFailed(TaskFailed):
    """A script failed on the host: carries the structured error the script reported."""

    def __init__(
        self,
        script: str,
        message: str,
        *,
        cmdlet: str = "",
        line: int = 0,
        error_type: str = "",
        category: str = "",
    ) -> None:
        where = f" at line {line}" if line else ""
        by = f" in {cmdlet}" if cmdlet else ""
        super().__init__(f"hyperv: {script} failed{by}{where}: {message}")
        self.script = script
        self.cmdlet = cmdlet
        self.line = line
        self.error_type = error_type
        self.category = category
        self.reason = message


class WinRMFault(TaskFailed):
    """The WS-Management service answered with a SOAP fault."""

    def __init__(self, message: str, *, subcode: str | None, wsman_code: int | None) -> None:
        super().__init__(message)
        self.subcode = subcode
        self.wsman_code = wsman_code


def _winrm() -> Any:
    import winrm

    return winrm


def open_session(
    endpoint: str,
    user: str,
    password: str,
    *,
    transport: str,
    verify: bool,
    ca_file: str | None,
    read_timeout: int = 120,
    operation_timeout: int = 60,
) -> Any:
    """A ``winrm.Session`` for ``endpoint`` (no network traffic until the first script)."""
    winrm = _winrm()
    kwargs: dict[str, Any] = {
        "transport": transport,
        "server_cert_validation": "validate" if verify else "ignore",
        "read_timeout_sec": read_timeout,
        "operation_timeout_sec": operation_timeout,
        "proxy": None,
        # explicit: the CA file given, else the default bundle (never REQUESTS_CA_BUNDLE implicitly)
        "ca_trust_path": ca_file or None,
    }
    try:
        return winrm.Session(endpoint, auth=(user, password), **kwargs)
    except (ValueError, winrm.exceptions.WinRMError) as exc:
        # raised for a bad transport name or missing optional auth packages
        raise ConnectError(f"hyperv: cannot set up WinRM to {endpoint}: {type(exc).__name__}: {exc}") from exc


class HypervClient:
    """Runs scripts over one ``winrm.Session``-like object (anything with ``.protocol``)."""

    def __init__(self, session: Any, endpoint: str = "") -> None:
        self.session = session
        self.endpoint = endpoint or str(getattr(session, "url", "") or "the WinRM endpoint")
        self._lock = threading.Lock()  # one shell at a time over one HTTP session
        self.scripts_run = 0

    def run(self, script: Script) -> Any:
        """Run ``script`` and return its JSON result; raise a pacsinfra error on any failure."""
        encoded = base64.b64encode(script.text.encode("utf-16-le")).decode("ascii")
        args = ["-NoProfile", "-NonInteractive", "-EncodedCommand", encoded]
        with self._lock:
            out, err, code = self._call(script.name, args)
            self.scripts_run += 1
        return self._result(script.name, out, err, code)

    # -- transport --------------------------------------------------------------
    def _call(self, name: str, args: list[str]) -> tuple[bytes, bytes, int]:
        import requests
        from winrm import exceptions as wex

        protocol = self.session.protocol
        try:
            shell = protocol.open_shell()
            try:
                command = protocol.run_command(shell, "powershell", args, skip_cmd_shell=True)
                out, err, code = protocol.get_command_output(shell, command)
                protocol.cleanup_command(shell, command)
            finally:
                protocol.close_shell(shell, close_session=False)
        except wex.InvalidCredentialsError as exc:
            raise AuthError(
                f"hyperv: {self.endpoint} refused the credentials (HTTP 401); check provider.hyperv.user, "
                "the password reference and the transport"
            ) from exc
        except wex.WSManFaultError as exc:
            if exc.fault_subcode in _ACCESS_DENIED_SUBCODES:
                raise AuthError(f"hyperv: {self.endpoint} denied access running {name}: {exc.reason}") from exc
            raise WinRMFault(
                f"hyperv: {self.endpoint} answered {name} with a WS-Management fault "
                f"({exc.fault_subcode or exc.fault_code or 'no code'}"
                f"{', code ' + str(exc.wsman_fault_code) if exc.wsman_fault_code is not None else ''}): "
                f"{exc.reason}",
                subcode=exc.fault_subcode,
                wsman_code=exc.wsman_fault_code,
            ) from exc
        except wex.WinRMTransportError as exc:
            raise ConnectError(f"hyperv: {self.endpoint} answered HTTP {exc.code} to {name}") from exc
        except wex.WinRMError as exc:
            raise DriverError(f"hyperv: WinRM error running {name} on {self.endpoint}: {exc}") from exc
        except requests.exceptions.SSLError as exc:
            raise ConnectError(
                f"hyperv: TLS handshake with {self.endpoint} failed (certificate not trusted or "
                "wrong host name?); set provider.hyperv.ca_file to the CA that signed the WinRM "
                "listener's certificate"
            ) from exc
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
            raise ConnectError(f"hyperv: cannot reach {self.endpoint}: {type(exc).__name__}") from exc
        except AssertionError as exc:
            # pywinrm asserts RelatesTo on Signal and Delete
            raise ConnectError(f"hyperv: {self.endpoint} sent a malformed WS-Management reply") from exc
        return bytes(out), bytes(err), int(code)

    # -- results ----------------------------------------------------------------
    def _result(self, name: str, out: bytes, err: bytes, code: int) -> Any:
        text = out.decode("utf-8", errors="replace").strip()
        doc: Any = None
        if text:
            try:
                doc = json.loads(text.splitlines()[-1])
            except ValueError:
                doc = None
        if isinstance(doc, dict) and isinstance(doc.get("error"), dict):
            e = doc["error"]
            raise PowerShellFailed(
                name,
                str(e.get("message") or "(no message)"),
                cmdlet=str(e.get("cmdlet") or ""),
                line=int(e.get("line") or 0),
                error_type=str(e.get("type") or ""),
                category=str(e.get("category") or ""),
            )
        if code != 0 or doc is None:
            detail = self._stderr(err) or text[:300] or "(no output)"
            raise TaskFailed(f"hyperv: {name} exited with code {code} without a JSON result: {detail}")
        return doc

    def _stderr(self, err: bytes) -> str:
        clean = getattr(self.session, "_clean_error_msg", None)
        if callable(clean) and err:
            err = clean(err)
        return err.decode("utf-8", errors="replace").strip()[:300]
