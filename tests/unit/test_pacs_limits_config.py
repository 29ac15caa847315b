"""The listeners' limits in the archive and router configs: defaults and refusals with
messages that say what to change."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from pacsinfra.pacs.archive.config import ArchiveConfig
from pacsinfra.pacs.fastscp.fastpath import ListenerLimits
from pacsinfra.pacs.router.config import RouterConfig


@pytest.mark.parametrize("model", [ArchiveConfig, RouterConfig])
def test_defaults(model: type) -> None:
    limits = model().limits
    assert (limits.pdu_size_limit, limits.request_timeout, limits.max_pending,
            limits.max_connections_per_address, limits.listen_backlog) == (
        4 << 20, 10, 64, 16, 128)
    listener = ListenerLimits.from_config(limits)
    assert listener.pdus.p_data == limits.max_pdu + 6 and listener.pdus.other == 4 << 20


@pytest.mark.parametrize("model", [ArchiveConfig, RouterConfig])
def test_max_pdu_must_fit_the_size_limit(model: type) -> None:
    with pytest.raises(ValidationError, match="max_pdu .* is larger than pdu_size_limit"):
        model(limits={"max_pdu": 8 << 20})
    ok = model(limits={"max_pdu": 8 << 20, "pdu_size_limit": 8 << 20}).limits
    assert ListenerLimits.from_config(ok).pdus.p_data == 8 << 20  # never above the limit
    unlimited = ListenerLimits.from_config(model(limits={"max_pdu": 0}).limits)
    assert unlimited.pdus.p_data == 4 << 20  # "no limit" announced: the size limit applies


@pytest.mark.parametrize("field,value", [
    ("pdu_size_limit", 1000), ("pdu_size_limit", 1 << 30), ("request_timeout", 0),
    ("request_timeout", 301), ("max_pending", 0), ("max_connections_per_address", 0),
    ("listen_backlog", 0), ("listen_backlog", 70_000), ("max_pendings", 3),
])
def test_out_of_range_values_are_refused(field: str, value: int) -> None:
    with pytest.raises(ValidationError, match=field):
        RouterConfig(limits={field: value})


def test_staging_needs_room_for_one_buffer() -> None:
    with pytest.raises(ValidationError, match="staging.total_bytes .* smaller than one buffer"):
        ArchiveConfig(staging={"buffer_bytes": 64 << 20, "total_bytes": 32 << 20})
    assert ArchiveConfig(staging={"buffer_bytes": 0, "total_bytes": 0}).staging.total_bytes == 0
