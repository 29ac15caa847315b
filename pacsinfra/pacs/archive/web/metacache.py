"""WADO-RS metadata of each instance, encoded once and kept in memory.

A viewer opening a study asks for the metadata of every instance of each series; an
instance's DICOM JSON never changes while its stored bytes do not, so it is encoded
once (the costly part: parsing the file and converting each element) and kept, keyed
by SOP Instance UID *and* the content hash the index holds, so a replaced instance is
never answered from the old bytes. The BulkDataURIs inside depend on who asks (the
base URL behind a proxy): they are stored with a placeholder that each answer fills.

The cache holds at most ``max_bytes`` of JSON (least recently used first out); 0 turns
it off.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict

#: stands for the base URL in cached JSON (a control character JSON always escapes)
BASE = "\u0001base\u0001"
_BASE_JSON = json.dumps(BASE)[1:-1].encode()


class MetadataCache:
    """A size-bounded LRU of per-instance DICOM JSON (bytes, with :data:`BASE`)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, sop_uid: str, sha256: str) -> bytes | None:
        """The cached JSON of this instance's current bytes, if any."""
        with self._lock:
            value = self._items.get((sop_uid, sha256))
            if value is None:
                self.misses += 1
                return None
            self._items.move_to_end((sop_uid, sha256))
            self.hits += 1
            return value

    def peek(self, sop_uid: str, sha256: str) -> bool:
        """Whether this instance's current bytes are cached (not counted as a hit or miss,
        not moved up)."""
        with self._lock:
            return (sop_uid, sha256) in self._items

    def put(self, sop_uid: str, sha256: str, value: bytes) -> None:
        """Keep ``value``, dropping the least recently used entries to make room."""
        if len(value) > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop((sop_uid, sha256), None)
            if old is not None:
                self._size -= len(old)
            self._items[(sop_uid, sha256)] = value
            self._size += len(value)
            while self._size > self.max_bytes:
                _, dropped = self._items.popitem(last=False)
                self._size -= len(dropped)

    @property
    def size(self) -> int:
        """Bytes held."""
        return self._size


def with_base(docs: list[bytes], base: str) -> bytes:
    """A JSON array of cached instance documents, their placeholders set to ``base``."""
    body = b"[" + b",".join(docs) + b"]"
    return body.replace(_BASE_JSON, json.dumps(base)[1:-1].encode())


__all__ = ["BASE", "MetadataCache", "with_base"]
