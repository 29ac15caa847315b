"""Where pacsinfra's Jinja2 templates live (``templates/<kind>/``), for every way it is installed.

The templates sit at the repository root. An installed wheel has no repository root,
so each kind (``kvm``, ``hyperv``, ``systemd``) is looked for, first match wins, in:

1. ``$PACSINFRA_TEMPLATES/<kind>`` (an operator's override, or a packager's choice);
2. ``pacsinfra/templates/<kind>`` inside the installed package (package data);
3. ``<sys.prefix>/share/pacsinfra/templates/<kind>`` (wheel data files, see pyproject);
4. ``<package root>/../templates/<kind>`` — the source tree / editable install.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import jinja2

from pacsinfra.errors import CapabilityError

_PACKAGE_ROOT = Path(__file__).resolve().parent  # .../pacsinfra


def template_dirs(kind: str) -> list[Path]:
    """Candidate directories holding the templates of ``kind``, in search order."""
    out: list[Path] = []
    env = os.environ.get("PACSINFRA_TEMPLATES")
    if env:
        out.append(Path(env) / kind)
    out.append(_PACKAGE_ROOT / "templates" / kind)
    out.append(Path(sys.prefix) / "share" / "pacsinfra" / "templates" / kind)
    out.append(_PACKAGE_ROOT.parent / "templates" / kind)
    return out


def find_template_dir(kind: str, marker: str) -> Path:
    """The first candidate directory of ``kind`` that holds ``marker``; a clear error if none."""
    candidates = template_dirs(kind)
    for directory in candidates:
        if (directory / marker).is_file():
            return directory
    searched = ", ".join(str(d) for d in candidates)
    raise CapabilityError(f"{kind} templates not found (searched: {searched}); set PACSINFRA_TEMPLATES")


def environment(kind: str, marker: str, **options: Any) -> jinja2.Environment:
    """A StrictUndefined Jinja2 environment over the ``kind`` templates (``options`` passed on)."""
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(find_template_dir(kind, marker))),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        **options,
    )
