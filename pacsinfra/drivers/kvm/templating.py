"""Find and render the ``templates/kvm/*.xml.j2`` Jinja2 templates (StrictUndefined).

The templates live at the repository root (``templates/kvm``). An installed wheel has
no repository root, so they are looked for, first match wins, in:

1. ``$PACSINFRA_TEMPLATES/kvm`` (an operator's override, or a packager's choice);
2. ``pacsinfra/templates/kvm`` inside the installed package (when the build ships the
   templates as package data);
3. ``<sys.prefix>/share/pacsinfra/templates/kvm`` (when shipped as wheel data files);
4. ``<package root>/../templates/kvm`` — the source tree / editable install.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Any

import jinja2

from pacsinfra.errors import CapabilityError

OWNER_NS = "https://pacsinfra.dev/xmlns/owner/1"


def template_dirs() -> list[Path]:
    """Candidate directories holding the KVM templates, in search order."""
    package_root = Path(__file__).resolve().parents[2]  # .../pacsinfra
    out: list[Path] = []
    env = os.environ.get("PACSINFRA_TEMPLATES")
    if env:
        out.append(Path(env) / "kvm")
    out.append(package_root / "templates" / "kvm")
    out.append(Path(sys.prefix) / "share" / "pacsinfra" / "templates" / "kvm")
    out.append(package_root.parent / "templates" / "kvm")
    return out


@functools.lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    """The shared Jinja2 environment (cached; Jinja2 environments are thread-safe to render)."""
    for directory in template_dirs():
        if (directory / "domain.xml.j2").is_file():
            return jinja2.Environment(
                loader=jinja2.FileSystemLoader(str(directory)),
                undefined=jinja2.StrictUndefined,
                autoescape=True,  # XML: names and intent JSON are escaped
                keep_trailing_newline=True,
            )
    searched = ", ".join(str(d) for d in template_dirs())
    raise CapabilityError(
        f"kvm templates not found (searched: {searched}); set PACSINFRA_TEMPLATES"
    )


def render(template: str, **context: Any) -> str:
    """Render ``templates/kvm/<template>`` with ``context``; undefined names are errors."""
    return environment().get_template(template).render(ns=OWNER_NS, **context)
