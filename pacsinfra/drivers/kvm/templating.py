"""Render the ``templates/kvm/*.xml.j2`` Jinja2 templates (StrictUndefined; lookup: pacsinfra.templating)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import jinja2

from pacsinfra import templating

OWNER_NS = "https://pacsinfra.dev/xmlns/owner/1"


def template_dirs() -> list[Path]:
    """Candidate directories holding the KVM templates, in search order."""
    return templating.template_dirs("kvm")


@functools.lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    """The shared Jinja2 environment (cached; Jinja2 environments are thread-safe to render)."""
    # XML: names and intent JSON are escaped
    return templating.environment("kvm", "domain.xml.j2", autoescape=True)


def render(template: str, **context: Any) -> str:
    """Render ``templates/kvm/<template>`` with ``context``; undefined names are errors."""
    return environment().get_template(template).render(ns=OWNER_NS, **context)
