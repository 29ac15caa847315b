"""Prometheus metrics of a running archive (prometheus_client text exposition)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST


class _ArchiveCollector:
    def __init__(self, service: Any, metadata: Any) -> None:
        self.service = service
        self.metadata = metadata

    def collect(self) -> Iterator[Any]:
        c = self.service.counters
        for name, attr, doc in (
            ("pacs_archive_instances_stored", "stored", "Instances stored (Success)"),
            ("pacs_archive_bytes_stored", "stored_bytes", "Bytes stored"),
            ("pacs_archive_store_failures", "failed", "C-STORE/STOW failures"),
            ("pacs_archive_duplicates", "duplicates", "Duplicate SOP Instance UIDs received"),
            ("pacs_archive_queries", "finds", "C-FIND requests"),
            ("pacs_archive_instances_retrieved", "retrieved", "Instances sent by C-MOVE/C-GET/WADO"),
            ("pacs_archive_metadata_warmed", "metadata_warmed",
             "Instances whose WADO-RS metadata was encoded right after the store"),
            ("pacs_archive_transcoded", "transcoded",
             "Instances decoded for a peer that accepted none of their stored syntax"),
            ("pacs_archive_corrupt_reads", "corrupt_reads",
             "Reads refused: the stored file no longer matched its checksum"),
            ("pacs_archive_scrub_bytes", "scrub_bytes", "Bytes re-verified by the scrub"),
            ("pacs_archive_scrub_instances", "scrub_instances",
             "Instances re-verified by the scrub"),
            ("pacs_archive_scrub_found", "scrub_found",
             "Changed files the scrub found (flagged)"),
            ("pacs_archive_scrub_passes", "scrub_passes",
             "Scrub passes over the whole archive completed since start-up"),
            ("pacs_archive_commitment_requests", "commitment_requests",
             "Storage Commitment requests accepted"),
            ("pacs_archive_commitment_reports", "commitment_reports",
             "Storage Commitment reports delivered"),
            ("pacs_archive_commitment_failed_instances", "commitment_failed_instances",
             "Instances reported as not committed"),
            ("pacs_archive_commitment_expired", "commitment_expired",
             "Storage Commitment reports given up undelivered"),
            ("pacs_archive_uploaded", "uploaded",
             "Cluster: instances uploaded from this node's receive cache to the store"),
            ("pacs_archive_upload_failures", "upload_failures",
             "Cluster: uploads that failed (retried with backoff)"),
        ):
            yield CounterMetricFamily(name, doc, value=getattr(c, attr))
        if self.metadata is not None:
            m = self.metadata
            yield CounterMetricFamily("pacs_archive_metadata_cache_hits", "WADO-RS metadata "
                                      "answered from memory (per instance)", value=m.hits)
            yield CounterMetricFamily("pacs_archive_metadata_cache_misses", "WADO-RS metadata "
                                      "encoded on the ask (per instance)", value=m.misses)
            yield GaugeMetricFamily("pacs_archive_metadata_cache_bytes", "Encoded WADO-RS "
                                    "metadata held in memory", value=m.size)
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


def render(service: Any, metadata: Any = None) -> tuple[bytes, str]:
    """The metrics page for ``service`` (and its WADO-RS ``metadata`` cache, when
    DICOMweb serves it) and its content type."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_ArchiveCollector(service, metadata))  # type: ignore[arg-type]
    return generate_latest(registry), CONTENT_TYPE_LATEST
