"""The fake driver, declared: it can do everything, holds nothing across processes."""

from __future__ import annotations

from typing import Any

from pacsinfra.drivers.base import Capability
from pacsinfra.drivers.declaration import STATIC_ADDRESS, Declaration
from pacsinfra.types import Strict


class FakeSettings(Strict):
    """``provider.fake``: nothing to set."""


class FakeImage(Strict):
    """An image of the fake hypervisor: any name."""

    template: str | None = None
    volume: str | None = None
    pool: str | None = None

    def model_post_init(self, context: Any, /) -> None:
        return None


DECLARATION = Declaration(
    name="fake",
    summary="an in-memory hypervisor, for the engine's tests (not selectable in a blueprint)",
    implementation="pacsinfra.drivers.fake.driver:FakeDriver",
    settings=FakeSettings,
    image=FakeImage,
    capabilities=frozenset(Capability),
    reach=STATIC_ADDRESS,
    selectable=False,
)
