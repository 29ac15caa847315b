"""Prometheus metrics of a running archive (prometheus_client text exposition)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST


class _ArchiveCollector:
    def __init__(self, service: Any) -> None:
        self.service = service

    def collect(self) -> Iterator[Any]:
        c = self.service.counters
        for name, attr, doc in (
            ("pacs_archive_instances_stored", "stored", "Instances stored (Success)"),
            ("pacs_archive_bytes_stored", "stored_bytes", "Bytes stored"),
            ("pacs_archive_store_failures", "failed", "C-STORE/STOW failures"),
            ("pacs_archive_duplicates", "duplicates", "Duplicate SOP Instance UIDs received"),
            ("pacs_archive_queries", "finds", "C-FIND requests"),
            ("pacs_archive_instances_retrieved", "retrieved", "Instances sent by C-MOVE/C-GET/WADO"),
        ):
            yield CounterMetricFamily(name, doc, value=getattr(c, attr))
        yield CounterMetricFamily("pacs_archive_index_commits", "Index transactions (group "
                                  "commits)", value=self.service.index.commits)
        g = GaugeMetricFamily("pacs_archive_tier_usage_ratio", "Filesystem usage per tier",
                              labels=["tier"])
        import shutil

        for name, tier in self.service.tiers.items():
            try:
                u = shutil.disk_usage(tier.root)
                g.add_metric([name], u.used / u.total)
            except OSError:
                continue
        yield g


def render(service: Any) -> tuple[bytes, str]:
    """The metrics page for ``service`` and its content type."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_ArchiveCollector(service))  # type: ignore[arg-type]
    return generate_latest(registry), CONTENT_TYPE_LATEST
