"""What the streaming SCP asks of the service behind it: where instances go and who
answers C-FIND. The archive and the router implement these (their ``sink`` modules)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from pacsinfra.pacs.fastscp.incoming import IncomingFile


@dataclass(frozen=True)
class StoreRequest:
    """What a C-STORE-RQ says, plus the association it came on."""

    sop_class: str
    sop_uid: str
    transfer_syntax: str
    calling: str
    called: str
    message_id: int
    peer: str  # host address of the requestor


class StoreSink(Protocol):
    """Where instances go (the archive's tiers, the router's spool)."""

    def open(self, req: StoreRequest, meta: bytes) -> IncomingFile | int:
        """A file to stream the data set into, or a failure status to answer once the
        data set has been read (and dropped)."""

    def finish(self, req: StoreRequest, incoming: IncomingFile) -> int:
        """The whole data set is in ``incoming``: make it durable and return the status.
        The sink owns the file from here (keeps it or discards it)."""


@dataclass(frozen=True)
class FindRequest:
    """What a C-FIND-RQ says, plus the association it came on."""

    sop_class: str  # the information model (Patient Root, Study Root)
    transfer_syntax: str  # of the identifier, and of the identifiers answered
    calling: str
    message_id: int
    peer: str


class QuerySink(Protocol):
    """Who answers C-FIND on a streaming association (the archive's index)."""

    def find(self, req: FindRequest, identifier: bytes) -> Iterator[tuple[int, bytes | None]]:
        """(status, identifier in ``req.transfer_syntax``) per pending match; a status
        that is not Pending ends the operation; when the iterator just ends, the
        association answers Success."""
