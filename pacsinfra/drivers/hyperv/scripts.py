"""Render the ``templates/hyperv/*.ps1.j2`` PowerShell scripts (Jinja2, StrictUndefined).

Every operation is one script with a JSON contract. The parameters travel as ONE JSON
document, base64-encoded into a string literal the script decodes with
``[Text.Encoding]::UTF8.GetString([Convert]::FromBase64String(...)) | ConvertFrom-Json``;
no value is ever pasted into PowerShell source, so a VM name with quotes, ``$( )`` or
newlines cannot inject code. The base64 alphabet has no quote, so the literal is safe.

Each script starts with a header line ``# pacsinfra-script: <name> v<version>`` naming
the template and the version of its contract (the tests' Hyper-V model dispatches on it).

Templates are looked for, first match wins, in ``$PACSINFRA_TEMPLATES/hyperv``,
``pacsinfra/templates/hyperv`` (package data), ``<sys.prefix>/share/pacsinfra/templates/hyperv``
and the source tree's ``templates/hyperv``.
"""

from __future__ import annotations

import base64
import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2

from pacsinfra import templating
from pacsinfra.errors import CapabilityError

# script name -> contract version; bump the version when a script's JSON contract changes.
SCRIPTS: dict[str, int] = {
    "host-info": 1,
    "get-vm": 1,
    "new-vm": 1,
    "set-vm": 1,
    "remove-vm": 1,
    "get-switch": 1,
    "new-switch": 1,
    "set-switch": 1,
    "remove-switch": 1,
    "get-storage": 1,
    "ensure-storage": 1,
    "remove-storage": 1,
}

HEADER_RE = re.compile(r"^# pacsinfra-script: (?P<name>[a-z-]+) v(?P<version>\d+)$", re.M)
PARAMS_RE = re.compile(r"^\$PacsinfraParams = '(?P<b64>[A-Za-z0-9+/=]*)'$", re.M)

# powershell.exe takes at most 32767 characters of command line (CreateProcess); the script
# travels UTF-16LE + base64 encoded, so this is the longest script text we can send.
MAX_SCRIPT_CHARS = (32767 - 200) * 3 // 8


@dataclass(frozen=True)
class Script:
    """One rendered script: its template name, the PowerShell text and its parameters."""

    name: str
    text: str
    parameters: Mapping[str, Any] = field(default_factory=dict)

    @property
    def version(self) -> int:
        return SCRIPTS[self.name]


def template_dirs() -> list[Path]:
    """Candidate directories holding the Hyper-V templates, in search order."""
    return templating.template_dirs("hyperv")


@functools.lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    """The shared Jinja2 environment (no autoescape: nothing user-supplied is rendered raw)."""
    return templating.environment("hyperv", "_script.ps1.j2", autoescape=False,
                                  trim_blocks=True, lstrip_blocks=True)


def encode_parameters(parameters: Mapping[str, Any]) -> str:
    """The parameters document as the base64 string literal a script decodes (UTF-8 JSON)."""
    doc = json.dumps(parameters, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return base64.b64encode(doc.encode("utf-8")).decode("ascii")


def render(name: str, parameters: Mapping[str, Any]) -> Script:
    """Render the script ``name`` carrying ``parameters``; undefined template names are errors."""
    if name not in SCRIPTS:
        raise ValueError(f"unknown hyperv script {name!r}")
    text = (
        environment()
        .get_template(f"{name}.ps1.j2")
        .render(script=name, version=SCRIPTS[name], params_b64=encode_parameters(parameters))
    )
    if len(text) > MAX_SCRIPT_CHARS:
        raise CapabilityError(
            f"hyperv: the {name} script is {len(text)} characters; powershell.exe accepts at most "
            f"{MAX_SCRIPT_CHARS} (too many disks or NICs in one machine?)"
        )
    return Script(name=name, text=text, parameters=dict(parameters))


def parse_script(text: str) -> tuple[str, int, dict[str, Any]]:
    """Name, contract version and parameters of a rendered script (the inverse of :func:`render`)."""
    header = HEADER_RE.search(text)
    params = PARAMS_RE.search(text)
    if header is None or params is None:
        raise ValueError("not a pacsinfra script (no header or no parameters literal)")
    doc = json.loads(base64.b64decode(params.group("b64")).decode("utf-8"))
    if not isinstance(doc, dict):
        raise ValueError("the parameters document is not a JSON object")
    return header.group("name"), int(header.group("version")), doc
