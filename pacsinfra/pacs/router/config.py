"""The router's configuration: what ``services.router`` in a blueprint renders to.

Rules are data, not code: a match is a tree of ``all`` / ``any`` / ``not`` nodes over
conditions on tags and AE titles; actions forward, drop, morph tags and stop.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, model_validator

from pacsinfra.pacs.config_common import AETitle, DicomListener, Port, Strict, TlsConfig
from pacsinfra.pacs.web_config import is_loopback
from pacsinfra.secrets import SecretRef


class Condition(Strict):
    """One test, or a boolean combination of tests.

    Exactly one of: ``all``, ``any``, ``not`` (combinations), or a leaf naming what
    it looks at (``tag`` — keyword like ``Modality`` or ``(0009,0010)`` —,
    ``calling_ae`` or ``called_ae``) with one operator (``equals``, ``in``,
    ``wildcard``, ``regex``, ``range`` [low, high], ``present``).

    Attributes:
        all: Matches when every condition in the list matches.
        any: Matches when at least one condition in the list matches.
        not: Matches when the condition does not.
        tag: The element a test looks at: a keyword (``Modality``) or a tag number
            (``(0009,1001)`` or ``00091001``, for private tags).
        calling_ae: The test looks at the association's calling AE title.
        called_ae: The test looks at the association's called AE title.
        equals: Equal to this value (numbers compare numerically: ``12`` matches ``"12"``).
        in: Equal to one of these values.
        wildcard: Matches this pattern: ``*`` any characters, ``?`` one; case-sensitive.
        regex: Python regular expression, searched anywhere in the value.
        range: ``[low, high]``, inclusive; numeric when both are numbers, else string order
            (dates work); ``null`` leaves a side open.
        present: ``true``: the element exists (even empty); ``false``: it does not.
    """

    all: list[Condition] | None = None
    any: list[Condition] | None = None
    not_: Condition | None = Field(None, alias="not")
    tag: str | None = None
    calling_ae: bool = False
    called_ae: bool = False
    equals: Any = None
    in_: list[Any] | None = Field(None, alias="in")
    wildcard: str | None = None
    regex: str | None = None
    range: tuple[Any, Any] | None = None
    present: bool | None = None

    model_config = Strict.model_config | {"populate_by_name": True}

    @model_validator(mode="after")
    def _shape(self) -> Condition:
        combos = [k for k in ("all", "any", "not_") if getattr(self, k) is not None]
        subjects = int(self.tag is not None) + int(self.calling_ae) + int(self.called_ae)
        ops = [
            k
            for k in ("equals", "in_", "wildcard", "regex", "range", "present")
            if getattr(self, k) is not None
        ]
        if combos:
            if len(combos) > 1 or subjects or ops:
                raise ValueError("a condition is either one of all/any/not, or one test")
            return self
        if subjects != 1:
            raise ValueError("a test names exactly one of tag, calling_ae or called_ae")
        if len(ops) != 1:
            raise ValueError("a test has exactly one of equals, in, wildcard, regex, range, present")
        if self.regex is not None:
            import re

            try:
                re.compile(self.regex)
            except re.error as exc:
                raise ValueError(f"invalid regex {self.regex!r}: {exc}") from None
        return self


class TagEdit(Strict):
    """A tag morphing step: set a value, remove a tag, copy one tag to another, or prefix.

    Attributes:
        op: ``set`` a value (the element is created if absent), ``remove`` the element,
            ``copy`` ``source`` into it, or ``prefix`` its value with ``value``.
        tag: The element edited: a keyword or a tag number.
        value: The value to set, or the prefix.
        source: The element copied from (nothing happens when it is absent).
    """

    op: Literal["set", "remove", "copy", "prefix"]
    tag: str
    value: str | None = None
    source: str | None = None  # copy

    @model_validator(mode="after")
    def _args(self) -> TagEdit:
        if self.op in ("set", "prefix") and self.value is None:
            raise ValueError(f"tag edit '{self.op}' needs 'value'")
        if self.op == "copy" and not self.source:
            raise ValueError("tag edit 'copy' needs 'source'")
        return self


class Completion(Strict):
    """When the study (or series) a rule holds is complete enough to forward.

    DICOM has no "study complete" signal; a study is complete when it has been quiet for
    ``quiet_seconds`` and (study level) every pattern of ``expect_series`` matches the
    SeriesDescription of at least one of its series. ``timeout_seconds`` after its first
    instance an incomplete study (or series) gets ``when_incomplete``.

    Attributes:
        level: ``study``: the whole study goes at once; ``series``: each series on its own.
        quiet_seconds: Nothing new for this long (on this rule's instances).
        expect_series: SeriesDescription patterns (``*`` and ``?`` wildcards, case-
            insensitive; ``re:`` for a regular expression), each of which some series must
            match. Study level only.
        timeout_seconds: Seconds after the first instance when an incomplete study is
            decided by ``when_incomplete``.
        when_incomplete: ``send`` what is there; ``hold`` on, until it completes;
            ``discard`` (its rows are dead-lettered with the reason, ``queue retry``
            sends them after all).
    """

    level: Literal["study", "series"] = "study"
    quiet_seconds: float = Field(30, ge=0)
    expect_series: list[str] = Field(default_factory=list)
    timeout_seconds: float = Field(3600, gt=0)
    when_incomplete: Literal["send", "hold", "discard"] = "send"

    @model_validator(mode="after")
    def _patterns(self) -> Completion:
        if self.expect_series and self.level != "study":
            raise ValueError("expect_series needs level: study (a series cannot expect series)")
        for p in self.expect_series:
            if p.startswith("re:"):
                try:
                    re.compile(p[3:])
                except re.error as exc:
                    raise ValueError(f"expect_series {p!r}: not a regular expression: {exc}"
                                     ) from exc
        return self


class Rule(Strict):
    """Match, then act. Rules run in order; ``stop`` ends evaluation after a match.

    Attributes:
        name: Shown by ``router explain``, in logs and in audit messages.
        match: The condition; unset matches everything.
        forward: Destinations or groups that receive the instance, with the edits of this rule
            and the matched rules before it.
        drop: Discard the instance: nothing is forwarded, not even by earlier rules, and
            evaluation ends.
        edits: Tag edits; they accumulate over the matched rules, in order.
        stop: End evaluation after this rule when it matches.
        per_study: Hold this rule's deliveries until the study has received nothing for
            ``stable_study_seconds`` (``complete`` with only that quiet time).
        complete: Hold this rule's deliveries until the study or series is complete.
    """

    name: str
    match: Condition | None = None  # None matches everything
    forward: list[str] = Field(default_factory=list)  # destinations or groups
    drop: bool = False
    edits: list[TagEdit] = Field(default_factory=list)
    stop: bool = False
    per_study: bool = False  # act once the study is stable
    complete: Completion | None = None

    @model_validator(mode="after")
    def _one_hold(self) -> Rule:
        if self.per_study and self.complete is not None:
            raise ValueError(f"rule {self.name!r}: per_study and complete both hold the "
                             "study; keep complete (per_study is its quiet time alone)")
        return self


class Destination(Strict):
    """A forwarding target.

    Attributes:
        ae_title: The destination's (called) AE title.
        host: Its host name or address (in a blueprint, ``service`` fills it in).
        port: Its DICOM port.
        service: Blueprint: the service (an archive) this destination is; fills in ``host``.
        tls: TLS towards it.
        max_associations: Associations open to it at once, each with its own sending worker.
        transfer_syntaxes: Transfer syntax UIDs offered after the file's own, in order of
            preference.
        transcode: Decode a compressed instance the destination accepts no syntax of
            (false: dead-letter it).
        storage_commitment: Keep each instance until the destination commits it (Storage
            Commitment Push Model): after a batch is stored, an N-ACTION asks for its
            commitment; the destination's N-EVENT-REPORT (on the router's listener, so the
            destination must know the router's AE title, host and port) ends the rows.
        commitment_timeout: Seconds to wait for the report; then the instances are sent
            again (counted as a failed attempt).
    """

    ae_title: AETitle
    host: str | None = None
    port: Port = 104
    service: str | None = None  # blueprint: a service whose nodes this targets
    tls: TlsConfig = Field(default_factory=TlsConfig)
    max_associations: int = Field(2, ge=1, le=64)
    transfer_syntaxes: list[str] = Field(default_factory=list)  # preferred, in order
    # Decode when the destination accepts none of the file's syntax (needs a codec); false:
    # such a file is dead-lettered instead.
    transcode: bool = True
    storage_commitment: bool = False
    commitment_timeout: float = Field(600, gt=0, le=7 * 86400)

    @model_validator(mode="after")
    def _addressable(self) -> Destination:
        if not (self.host or self.service):
            raise ValueError("a destination needs 'host' (or 'service' in a blueprint)")
        return self


class DestinationGroup(Strict):
    """Several destinations that share the work, with health checks.

    Attributes:
        members: Names of the destinations that share the work.
        strategy: ``by_study``: each study goes whole to one member; ``least_outstanding``:
            each instance to the healthy member with the fewest in flight.
        health_check_interval: Seconds between C-ECHO health checks of each member.
        resend_window: Seconds: instances a member acknowledged within this window are sent to
            another member when it goes down.
    """

    members: list[str] = Field(min_length=1)
    strategy: Literal["least_outstanding", "by_study"] = "by_study"
    health_check_interval: float = Field(10, gt=0, le=3600)
    # Instances delivered to a node within this window are re-sent elsewhere if it dies.
    resend_window: float = Field(600, ge=0)


class RetryPolicy(Strict):
    """Capped exponential backoff with jitter, then dead-letter.

    Attributes:
        max_attempts: Attempts before an instance is dead-lettered.
        initial_backoff: Seconds before the first retry; each retry doubles it.
        max_backoff: Longest wait between attempts, in seconds.
        jitter: Each wait varies randomly by up to this fraction (0.2: ±20 %).
    """

    max_attempts: int = Field(10, ge=1, le=1000)
    initial_backoff: float = Field(1.0, gt=0)
    max_backoff: float = Field(300.0, gt=0)
    jitter: float = Field(0.2, ge=0, le=1)


class QueueConfig(Strict):
    """The durable queue: SQLite by default, PostgreSQL when several routers share it.

    Attributes:
        backend: ``sqlite`` for one router, ``postgresql`` for several routers sharing the
            queue (they must share ``spool_dir`` too).
        path: SQLite file (default ``<spool_dir>/queue.sqlite``).
        service: Blueprint: the database service that holds the queue.
        host: PostgreSQL server (in a blueprint, ``service`` fills it in).
        port: PostgreSQL port.
        database: PostgreSQL database.
        user: PostgreSQL role.
        password: Password of ``user``.
    """

    backend: Literal["sqlite", "postgresql"] = "sqlite"
    path: str | None = None
    service: str | None = None
    host: str | None = None
    port: Port = 5432
    database: str = "router"
    user: str = "router"
    password: SecretRef | None = None
    # Delivered rows (and their spool files) are kept this long for `queue list` and audits.
    keep_done_seconds: float = Field(300, ge=0)
    # Shared (postgresql) queues: a row in flight longer than this belonged to a router
    # that died, and is sent again. Must exceed the longest batch send.
    inflight_lease_seconds: float = Field(300, gt=0)

    @model_validator(mode="after")
    def _postgres_needs_a_place(self) -> QueueConfig:
        if self.backend == "postgresql" and not (self.service or self.host):
            raise ValueError("a postgresql queue needs 'service' (in a blueprint) or 'host'")
        return self


class RouterConfig(DicomListener):
    """Everything the router needs to run; also ``services.router`` in a blueprint.

    Attributes:
        spool_dir: Where received instances are kept until every destination has them; also the
            default place of the SQLite queue.
        queue: The durable queue of deliveries.
        destinations: Forwarding targets by name.
        groups: Groups of destinations sharing the work, by name; rules forward to them like to
            a destination.
        rules: Routing rules, evaluated in order for every instance.
        retry: Retries of failed deliveries.
        stable_study_seconds: A study that received nothing for this long is complete, for
            ``per_study`` rules.
        metrics_port: Port of the Prometheus text endpoint (``GET /metrics``) on
            ``metrics_bind``; unset: no endpoint.
        metrics_bind: Listen address of the metrics endpoint.
    """

    ae_title: AETitle = "ROUTER"
    spool_dir: str = "/var/lib/pacsinfra/router"
    queue: QueueConfig = Field(default_factory=QueueConfig)
    destinations: dict[str, Destination] = Field(default_factory=dict)
    groups: dict[str, DestinationGroup] = Field(default_factory=dict)
    rules: list[Rule] = Field(default_factory=list)
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    stable_study_seconds: float = Field(30, ge=0)
    metrics_port: Port | None = None  # Prometheus text endpoint on 127.0.0.1 when set
    metrics_bind: str = "127.0.0.1"
    # The metrics endpoint has no authentication: off loopback only when this says so
    # (labs; logged loudly at start). Elsewhere scrape it through a tunnel or a proxy.
    metrics_allow_anonymous: bool = False

    @model_validator(mode="after")
    def _references(self) -> RouterConfig:
        if self.metrics_port and not is_loopback(self.metrics_bind) \
                and not self.metrics_allow_anonymous:
            raise ValueError(
                f"metrics_bind is {self.metrics_bind!r}, which is reachable from the network, "
                "but the metrics endpoint has no authentication: bind 127.0.0.1 (scrape "
                "through an SSH tunnel or an authenticating proxy), or set "
                "metrics_allow_anonymous: true (labs only)")
        known = set(self.destinations) | set(self.groups)
        for name, group in self.groups.items():
            for m in group.members:
                if m not in self.destinations:
                    raise ValueError(f"group {name!r} names unknown destination {m!r}")
        for rule in self.rules:
            for target in rule.forward:
                if target not in known:
                    raise ValueError(
                        f"rule {rule.name!r} forwards to unknown {target!r}; "
                        f"known: {sorted(known) or 'none'}"
                    )
        return self


__all__ = [
    "Condition",
    "Destination",
    "DestinationGroup",
    "QueueConfig",
    "RetryPolicy",
    "RouterConfig",
    "Rule",
    "TagEdit",
]
