"""Forwarding workers: claim queue rows per destination (or group), send, record the outcome.

Each destination gets ``max_associations`` worker threads, each with its own kept-open
association. A group gets one worker per association slot of its members; a worker
picks a healthy member per batch (``least_outstanding``: fewest rows in flight;
``by_study``: the node the study is pinned to, new studies to the node with fewest).
Health checks (C-ECHO) take dead members out and put them back; when a member dies
its pending rows and the rows it received within ``resend_window`` go back to the
group's queue, so a half-sent study is sent whole to another member.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from pacsinfra.pacs.router.commitment import Commitments, request
from pacsinfra.pacs.router.config import Destination, RouterConfig
from pacsinfra.pacs.router.queue import Item, Queue
from pacsinfra.pacs.router.sender import Outcome, Sender
from pacsinfra.pacs.router.spool import Spool, file_crc

LOG = logging.getLogger("pacsinfra.router")
BATCH = 32
SKIP_STUDIES = 8  # studies a group worker looks past when their member is busy
IDLE_RELEASE = 1.0  # seconds without work before a worker releases its associations
COMMIT_REQUESTS = 4  # storage commitment requests in flight at once


@dataclass
class Node:
    """One destination as a sending endpoint: health and free association slots."""

    name: str
    dest: Destination
    healthy: bool = True
    outstanding: int = 0
    slots: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(1))


@dataclass
class Target:
    """A queue key: a destination, or a group of destinations."""

    name: str
    members: list[str]
    strategy: str | None  # None for a plain destination
    keep_seconds: float
    health_interval: float = 10.0
    lock: threading.Lock = field(default_factory=threading.Lock)
    wake: threading.Event = field(default_factory=threading.Event)


class Stats:
    """Per-destination counters for metrics (thread-safe)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sent: dict[str, int] = {}
        self.failed: dict[str, int] = {}
        self.dead: dict[str, int] = {}
        self._recent: dict[str, deque[float]] = {}

    def add(self, table: str, node: str, n: int = 1) -> None:
        """Count ``n`` events of kind ``table`` (sent/failed/dead) for ``node``."""
        with self.lock:
            d: dict[str, int] = getattr(self, table)
            d[node] = d.get(node, 0) + n
            if table == "sent":
                q = self._recent.setdefault(node, deque())
                now = time.monotonic()
                q.extend([now] * n)
                while q and q[0] < now - 60:
                    q.popleft()

    def rate(self, node: str) -> float:
        """Instances per second delivered to ``node`` over the last minute."""
        with self.lock:
            q = self._recent.get(node, deque())
            now = time.monotonic()
            return sum(1 for t in q if t >= now - 60) / 60.0


class Forwarder:
    """Owns the sending threads of one router process."""

    def __init__(self, cfg: RouterConfig, queue: Queue, spool: Spool, audit: Any = None) -> None:
        self.cfg = cfg
        self.queue = queue
        self.spool = spool
        self.audit = audit
        self.stats = Stats()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        keep = cfg.queue.keep_done_seconds
        self.nodes = {
            n: Node(n, d, slots=threading.Semaphore(d.max_associations))
            for n, d in cfg.destinations.items()
        }
        self.targets: dict[str, Target] = {
            n: Target(n, [n], None, keep) for n in cfg.destinations
        }
        for g, grp in cfg.groups.items():
            self.targets[g] = Target(g, list(grp.members), grp.strategy,
                                     max(keep, grp.resend_window), grp.health_check_interval)
        self._pick_lock = threading.Lock()
        self._rr = 0
        self.commitments = Commitments(queue, self._commit_done, self._commit_failed)
        self._commit_pool = ThreadPoolExecutor(max_workers=COMMIT_REQUESTS,
                                               thread_name_prefix="commitment")

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Start the workers and the health checkers."""
        for t in self.targets.values():
            if t.strategy is None:
                workers = self.nodes[t.name].dest.max_associations
            else:
                workers = sum(self.nodes[m].dest.max_associations for m in t.members)
                self._spawn(f"health-{t.name}", self._health_loop, t)
            for i in range(workers):
                self._spawn(f"fwd-{t.name}-{i}", self._worker, t)

    def _spawn(self, name: str, fn: Any, *args: Any) -> None:
        th = threading.Thread(target=fn, args=args, name=name, daemon=True)
        th.start()
        self._threads.append(th)

    def stop(self) -> None:
        """Stop the workers (rows in flight finish or are retried at next start)."""
        self._stop.set()
        for t in self.targets.values():
            t.wake.set()
        for th in self._threads:
            th.join(timeout=10)
        # requests not yet sent end as overdue reports, and their rows are sent again
        self._commit_pool.shutdown(wait=True, cancel_futures=True)

    def wake(self, names: set[str] | None = None) -> None:
        """New rows were queued for these targets: let their workers look now."""
        for n, t in self.targets.items():
            if names is None or n in names:
                t.wake.set()

    # -- backoff -----------------------------------------------------------------------------
    def next_attempt(self, attempts_before: int, now: float) -> float | None:
        """When to retry after failed attempt number ``attempts_before + 1`` (None: dead)."""
        policy = self.cfg.retry
        if attempts_before + 1 >= policy.max_attempts:
            return None
        delay = min(policy.max_backoff, policy.initial_backoff * (2 ** attempts_before))
        delay *= 1 + policy.jitter * random.uniform(-1, 1)
        return now + min(delay, policy.max_backoff)

    # -- workers -----------------------------------------------------------------------------
    def _worker(self, target: Target) -> None:
        senders: dict[str, Sender] = {}
        last_busy = time.monotonic()
        try:
            while not self._stop.is_set():
                try:
                    busy = self._step(target, senders)
                except Exception:  # noqa: BLE001 - a worker must survive any one bad row
                    LOG.exception("forwarding to %s failed unexpectedly", target.name)
                    busy = False
                if busy:
                    last_busy = time.monotonic()
                    continue
                if senders and time.monotonic() - last_busy > IDLE_RELEASE:
                    # Do not hold a destination's association slots while there is no work.
                    for s in senders.values():
                        s.close()
                target.wake.wait(0.25)
                target.wake.clear()
        finally:
            for s in senders.values():
                s.close()

    def _choose(self, target: Target, batch: list[Item]) -> str | None:
        """The member to send this batch to, with a slot acquired; None if none is free."""
        healthy = [m for m in target.members if self.nodes[m].healthy]
        if target.strategy is None:
            node = self.nodes[target.name]
            return target.name if node.slots.acquire(blocking=False) else None
        if not healthy:
            return None
        with self._pick_lock:
            if target.strategy == "by_study":
                study = batch[0].study_uid
                pinned = self.queue.affinity(target.name, study)
                if pinned not in healthy:
                    counts = self.queue.pinned_counts(target.name)
                    self._rr += 1
                    order = healthy[self._rr % len(healthy):] + healthy[:self._rr % len(healthy)]
                    pinned = min(order, key=lambda m: counts.get(m, 0))
                    self.queue.pin(target.name, study, pinned)
                return pinned if self.nodes[pinned].slots.acquire(blocking=False) else None
            self._rr += 1
            order = healthy[self._rr % len(healthy):] + healthy[:self._rr % len(healthy)]
            # Ties (common: nodes keep up) go to the node that got less so far, so equal
            # nodes share equally instead of by who happened to be asked first.
            with self.stats.lock:
                sent = dict(self.stats.sent)
            for m in sorted(order, key=lambda m: (self.nodes[m].outstanding, sent.get(m, 0))):
                if self.nodes[m].slots.acquire(blocking=False):
                    return m
            return None

    def _step(self, target: Target, senders: dict[str, Sender]) -> bool:
        with target.lock, self.queue.exclusive(target.name):
            skip: list[str] = []
            while True:
                batch = self.queue.next_batch(target.name, BATCH, skip=skip)
                if not batch:
                    return False
                if target.strategy is not None and not any(
                        self.nodes[m].healthy for m in target.members):
                    # Every member is down: the head waits like any failed attempt.
                    head = batch[0]
                    now = time.time()
                    self.queue.failed(head.id, status=None, error="no healthy member in group",
                                      next_at=self._retry_at(head, now, permanent=False),
                                      node=None)
                    return True
                node = self._choose(target, batch)
                if node is not None:
                    break
                if target.strategy is None or len(skip) >= SKIP_STUDIES:
                    return False
                # This study's member is busy; a study bound elsewhere need not wait for it.
                skip.append(batch[0].study_uid)
            ids = self.queue.claim([b.id for b in batch], node)
        try:
            self._send(target, node, [b for b in batch if b.id in set(ids)], senders)
        finally:
            self.nodes[node].slots.release()
        return True

    def _retry_at(self, item: Item, now: float, *, permanent: bool) -> float | None:
        if permanent:
            return None
        return self.next_attempt(item.attempts, now)

    def _send(self, target: Target, node: str, items: list[Item],
              senders: dict[str, Sender]) -> None:
        sender = senders.get(node)
        if sender is None:
            sender = senders[node] = Sender(node, self.nodes[node].dest, self.cfg.ae_title,
                                            self.cfg.limits)
        delivered: list[int] = []
        refs: list[tuple[str, str]] = []  # (SOP class, SOP instance) of what was delivered
        n = self.nodes[node]
        n.outstanding += len(items)
        sums = self.queue.sums_of(sorted({i.spool for i in items}))
        try:
            for pos, item in enumerate(items):
                out = self._verified_send(sender, item, sums.get(item.spool))
                if out.ok:
                    delivered.append(item.id)
                    refs.append((out.sop_class, item.sop_uid))
                    self.spool.drop_cache(item.spool)
                    if self.audit is not None:
                        self.audit.forwarded(node, n.dest.ae_title, item.study_uid, item.sop_uid)
                    continue
                self._delivered(target, node, delivered, refs)
                delivered, refs = [], []
                now = time.time()
                others = [m for m in target.members if m != node and self.nodes[m].healthy]
                at = self._retry_at(item, now, permanent=out.permanent)
                if at is not None and out.transport and target.strategy is not None and others:
                    at = now  # another member can take it right away
                self.queue.failed(item.id, status=out.status, error=out.error, next_at=at,
                                  node=node)
                self.stats.add("failed", node)
                if at is None:
                    self.stats.add("dead", node)
                    LOG.error("dead-letter: %s -> %s: %s", item.sop_uid, node, out.error)
                    if self.audit is not None:
                        self.audit.dead_lettered(node, n.dest.ae_title, item.study_uid,
                                                 item.sop_uid, out.error)
                else:
                    LOG.warning("%s -> %s: %s (attempt %d, retry in %.1fs)", item.sop_uid, node,
                                out.error, item.attempts + 1, at - now)
                self.queue.release([i.id for i in items[pos + 1:]])
                if out.transport and target.strategy is not None:
                    self.mark_down(target, node, out.error)
                return
            self._delivered(target, node, delivered, refs)
        finally:
            n.outstanding -= len(items)

    def _verified_send(self, sender: Sender, item: Item, recorded: tuple[int, int] | None
                       ) -> Outcome:
        """Send one spool file once it reads back as it was received."""
        path = self.spool.path(item.spool)
        if recorded is not None:
            try:
                now = file_crc(path)
            except OSError as exc:
                return Outcome(False, error=f"spool file unreadable: {exc}", permanent=True)
            if now != recorded:
                LOG.error("spool file %s of %s changed since it was received (CRC-32 %08x, "
                          "%d bytes; received %08x, %d bytes): not sent", item.spool,
                          item.sop_uid, now[0], now[1], *recorded)
                return Outcome(False, permanent=True, error=(
                    "spool file changed since it was received (CRC-32 mismatch): not sent"))
        return sender.send(path)

    # -- storage commitment ------------------------------------------------------------------
    def _delivered(self, target: Target, node: str, ids: list[int],
                   refs: list[tuple[str, str]]) -> None:
        """Rows the destination stored: done, or (a destination that commits) waiting for
        its commitment, asked for here."""
        if not ids:
            return
        self.stats.add("sent", node, len(ids))
        dest = self.nodes[node].dest
        if not dest.storage_commitment:
            self.queue.done(ids, target.keep_seconds, node)
            return
        txn = self.commitments.new_transaction()
        # recorded before the N-ACTION: a report may come back before it returns; a
        # request lost to a crash from here on ends as an overdue report (sent again)
        self.queue.committing(ids, txn, time.time() + dest.commitment_timeout, node)
        # off the sending thread: the N-ACTION waits a moment for a report on its own
        # association, and sending goes on meanwhile
        self._commit_pool.submit(self._request_commitment, node, dest, txn, refs)

    def _request_commitment(self, node: str, dest: Destination, txn: str,
                            refs: list[tuple[str, str]]) -> None:
        try:
            problem = request(dest, self.cfg.ae_title, self.cfg.limits, txn, refs,
                              self.commitments.report)
        except Exception as exc:  # noqa: BLE001 - a request that broke is a failed attempt
            LOG.exception("%s: storage commitment request failed", node)
            problem = f"storage commitment request failed: {exc}"
        if problem:
            LOG.warning("%s: %s", node, problem)
            for item in self.queue.awaiting(txn):
                self._commit_failed(item, None, problem)

    def _commit_done(self, items: list[Item]) -> None:
        by_key: dict[tuple[str, str | None], list[int]] = {}
        for it in items:
            by_key.setdefault((it.dest, it.node), []).append(it.id)
        for (dest, node), ids in by_key.items():
            target = self.targets.get(dest)
            keep = target.keep_seconds if target else self.cfg.queue.keep_done_seconds
            self.queue.done(ids, keep, node)

    def _commit_failed(self, item: Item, status: int | None, error: str) -> None:
        """A row the destination did not commit: a failed attempt, sent again later."""
        now = time.time()
        # 0x0119: stored under another SOP class there; sending again changes nothing
        at = self._retry_at(item, now, permanent=status == 0x0119)
        self.queue.failed(item.id, status=status, error=error, next_at=at, node=item.node)
        node = item.node or item.dest
        self.stats.add("failed", node)
        if at is None:
            self.stats.add("dead", node)
            LOG.error("dead-letter: %s -> %s: %s", item.sop_uid, node, error)
            if self.audit is not None:
                dest = self.nodes[node].dest.ae_title if node in self.nodes else node
                self.audit.dead_lettered(node, dest, item.study_uid, item.sop_uid, error)
        else:
            LOG.warning("%s -> %s: %s (attempt %d, retry in %.1fs)", item.sop_uid, node, error,
                        item.attempts + 1, at - now)
        target = self.targets.get(item.dest)
        if target is not None:
            target.wake.set()

    # -- health ------------------------------------------------------------------------------
    def mark_down(self, target: Target, node: str, why: str) -> None:
        """Take ``node`` out of every group it belongs to and re-queue its recent work."""
        n = self.nodes[node]
        was = n.healthy
        n.healthy = False
        if was:
            LOG.warning("member %s is down (%s)", node, why)
        for t in self.targets.values():
            if t.strategy is not None and node in t.members:
                moved = self.queue.reassign(t.name, node)
                if moved:
                    LOG.warning("group %s: %d rows of %s re-queued", t.name, moved, node)
                t.wake.set()

    def _health_loop(self, target: Target) -> None:
        checkers = {m: Sender(m, self.nodes[m].dest, self.cfg.ae_title, self.cfg.limits)
                    for m in target.members}
        while not self._stop.wait(target.health_interval):
            for m, checker in checkers.items():
                ok = checker.echo()
                node = self.nodes[m]
                if ok and not node.healthy:
                    LOG.info("member %s is back", m)
                    node.healthy = True
                    target.wake.set()
                elif not ok and node.healthy:
                    self.mark_down(target, m, "C-ECHO failed")
