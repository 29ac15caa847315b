"""Collecting diagnostics: each check reports at the blueprint's file:line:col and carries on."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pacsinfra.blueprint.diagnose import format_path
from pacsinfra.blueprint.yaml_safe import Loc
from pacsinfra.errors import Diagnostic

_PROVIDER_CODES = frozenset({"capability", "image-driver", "provider", "no-nic", "archive-tier",
                             "static-host", "services-unreachable"})


class Reporter:
    """Collects diagnostics located through the merged Loc tree."""

    def __init__(self, root: Loc | None, file: str, dropped: dict[str, Any] | None = None) -> None:
        self.root = root
        self.file = file
        self.diags: list[Diagnostic] = []
        # partial validation: entries that exist in the file but did not validate
        self.dropped: dict[str, Any] = dropped or {}

    def exists_invalid(self, section: str, name: str) -> bool:
        """``name`` is in the file's ``section`` but was dropped for its own errors."""
        return name in self.dropped.get(section, ())

    @property
    def provider_known(self) -> bool:
        return "provider" not in self.dropped.get("*", ())

    def locate(self, parts: Iterable[Any]) -> Loc | None:
        node = self.root
        for p in parts:
            if node is None:
                return None
            nxt = node.child(p)
            if nxt is None:
                return node
            node = nxt
        return node

    def add(self, parts: tuple[Any, ...], message: str, *, hint: str = "", code: str,
            severity: str = "error", key: bool = False, ref: tuple[str, str] | None = None) -> None:
        if ref is not None and self.exists_invalid(*ref):
            return  # the target exists; its own errors are reported already
        if not self.provider_known and code in _PROVIDER_CODES:
            return
        if "metadata" in self.dropped.get("*", ()) and code == "hostname":
            return
        if code == "not-placed" and ref is None and parts[-1] in self.dropped.get(
            "service-users", ()
        ):
            return
        loc = self.locate(parts)
        line = col = 0
        file = self.file
        if loc is not None:
            file = loc.file
            line, col = (loc.key_line, loc.key_col) if key and loc.key_line else (loc.line, loc.col)
        self.diags.append(
            Diagnostic(message=message, path=format_path(parts), file=file, line=line,
                       column=col, hint=hint, severity=severity, code=code)
        )

    def warn(self, parts: tuple[Any, ...], message: str, *, hint: str = "", code: str,
             key: bool = False) -> None:
        self.add(parts, message, hint=hint, code=code, severity="warning", key=key)
