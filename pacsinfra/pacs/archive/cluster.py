"""Archive clusters: node heartbeats and the leader lease, as rows in the shared index.

Nothing here is a consensus protocol: PostgreSQL is the one source of truth. Each node
upserts its row in ``cluster_node`` every ``heartbeat_seconds``; the leader lease is one
row in ``cluster_lease``, taken by a conditional UPDATE (only when free, expired, or
already ours) in a short transaction, so it works through a pooler in transaction mode.
Its ``token`` grows each time the lease changes hands, which tells a job that its node
lost the lease in between. Times are the database's clock, so nodes' clocks may differ.
"""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import dataclass
from typing import Any

from pacsinfra.pacs.archive.config import ArchiveConfig
from pacsinfra.pacs.archive.db import Cursor, Database

LOG = logging.getLogger("pacsinfra.archive.cluster")
LEADER = "leader"  # the lease of the node that runs the once-only jobs


def node_name(cfg: ArchiveConfig) -> str:
    """This node's name: ``cluster.node``, else host name and DICOM port."""
    return cfg.cluster.node or f"{socket.gethostname()}:{cfg.port}"


def _now(cur: Cursor, backend: str) -> float:
    """The database's clock (PostgreSQL), so that nodes' clocks need not agree."""
    if backend == "postgresql":
        row = cur.execute("SELECT EXTRACT(EPOCH FROM clock_timestamp())").fetchone()
        assert row is not None
        return float(row[0])
    return time.time()


@dataclass(frozen=True)
class NodeRow:
    """One node as the cluster sees it."""

    node: str
    address: str | None
    version: str | None
    started_at: float
    heartbeat_at: float
    stored: int


@dataclass(frozen=True)
class LeaseRow:
    """One lease: who holds it, until when, and how many times it changed hands."""

    job: str
    holder: str
    expires_at: float
    token: int


class Cluster:
    """This node's view of the cluster: heartbeat, leadership, status."""

    def __init__(self, db: Database, cfg: ArchiveConfig, *, version: str = "") -> None:
        self.db = db
        self.cfg = cfg.cluster
        self.node = node_name(cfg)
        self.address = f"{socket.gethostname()}:{cfg.port}"
        self.version = version
        self.started_at = time.time()
        self.token: int | None = None  # the leader lease's token while we hold it

    def heartbeat(self, stored: int = 0) -> None:
        """Record that this node is alive (and what it stored since it started)."""
        with self.db.transaction() as cur:
            now = _now(cur, self.db.backend)
            cur.execute(
                "INSERT INTO cluster_node (node, address, version, started_at, heartbeat_at, "
                "stored) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (node) DO UPDATE SET "
                "address = excluded.address, version = excluded.version, "
                "started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at, "
                "stored = excluded.stored",
                (self.node, self.address, self.version, self.started_at, now, stored))

    def lead(self, job: str = LEADER) -> bool:
        """Take or renew the lease on ``job``; True while this node holds it."""
        with self.db.transaction() as cur:
            now = _now(cur, self.db.backend)
            until = now + self.cfg.lease_seconds
            cur.execute("INSERT INTO cluster_lease (job, holder, expires_at, token) "
                        "VALUES (?, ?, ?, 1) ON CONFLICT (job) DO NOTHING",
                        (job, self.node, until))
            cur.execute(
                "UPDATE cluster_lease SET token = token + CASE WHEN holder = ? THEN 0 ELSE 1 "
                "END, holder = ?, expires_at = ? WHERE job = ? AND (holder = ? OR "
                "expires_at < ?)", (self.node, self.node, until, job, self.node, now))
            row = cur.execute("SELECT holder, token FROM cluster_lease WHERE job = ?",
                              (job,)).fetchone()
        ours = row is not None and row[0] == self.node
        was = self.token is not None
        self.token = int(row[1]) if ours and row is not None else None
        if ours and not was:
            LOG.info("node %s leads the cluster's once-only jobs (lease token %s)", self.node,
                     self.token)
        elif was and not ours:
            LOG.warning("node %s lost the lease to %s", self.node, row[0] if row else "nobody")
        return ours

    def resign(self, job: str = LEADER) -> None:
        """Give the lease up at shutdown, so another node takes over at once."""
        with self.db.transaction() as cur:
            cur.execute("UPDATE cluster_lease SET expires_at = 0 WHERE job = ? AND holder = ?",
                        (job, self.node))
        self.token = None


def queues(db: Database) -> dict[str, int]:
    """Instances each node has not uploaded yet (its receive cache's rows)."""
    out: dict[str, int] = {}
    for tier, n in db.query("SELECT tier, COUNT(*) FROM instance WHERE tier LIKE ? "
                            "GROUP BY tier", ("%@%",)):
        node = str(tier).split("@", 1)[1]
        out[node] = out.get(node, 0) + int(n)
    return out


def status(db: Database) -> tuple[float, list[NodeRow], list[LeaseRow]]:
    """(the database's now, nodes, leases) for ``archive cluster status``."""
    with db.transaction() as cur:
        now = _now(cur, db.backend)
        nodes = [NodeRow(str(a), b, c, float(d), float(e), int(f)) for a, b, c, d, e, f in
                 cur.execute("SELECT node, address, version, started_at, heartbeat_at, stored "
                             "FROM cluster_node ORDER BY node").fetchall()]
        leases = [LeaseRow(str(a), str(b), float(c), int(d)) for a, b, c, d in
                  cur.execute("SELECT job, holder, expires_at, token FROM cluster_lease "
                              "ORDER BY job").fetchall()]
    return now, nodes, leases


def describe(now: float, nodes: list[NodeRow], leases: list[LeaseRow],
             heartbeat_seconds: float, queued: dict[str, int] | None = None) -> dict[str, Any]:
    """The status as JSON-ready data: each node alive or not, who leads, what each has
    not uploaded yet (``queued``, from :func:`queues`)."""
    queued = queued or {}
    leader = next((lease for lease in leases if lease.job == LEADER), None)
    live_leader = leader.holder if leader is not None and leader.expires_at > now else None
    return {
        "nodes": [{
            "node": n.node, "address": n.address, "version": n.version,
            "heartbeat_age_s": round(now - n.heartbeat_at, 1),
            "alive": now - n.heartbeat_at <= 3 * heartbeat_seconds,
            "up_s": round(now - n.started_at, 1), "stored_since_start": n.stored,
            "leader": n.node == live_leader, "not_uploaded": queued.get(n.node, 0),
        } for n in nodes],
        "leader": live_leader,
        "leases": [{"job": lease.job, "holder": lease.holder,
                    "expires_in_s": round(lease.expires_at - now, 1), "token": lease.token}
                   for lease in leases],
    }


__all__ = ["LEADER", "Cluster", "LeaseRow", "NodeRow", "describe", "node_name", "queues",
           "status"]
