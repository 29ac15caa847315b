"""The DICOM upper layer, hand-written: a streaming storage SCP (the C-STORE and C-FIND
receive path of the archive and the router) and a streaming requestor (the router's
sender), beside pynetdicom.

pynetdicom negotiates and serves everything else (C-MOVE, C-GET, TLS, role
selection, user identity). An association that proposes only storage, verification
and (with a query sink) C-FIND over plain TCP is served here instead, on its own
thread, with no queue hand-offs and no polling: each P-DATA PDU is read into one
buffer, and the data set fragments are written to the instance's file *as they
arrive*, so when the last fragment lands only a short ``fsync`` remains; the sink
(the archive's, the router's) reads the attributes it needs back meanwhile, then
renames, indexes or queues, and answers. Nothing is answered Success before the
sink says so.

Modules, bottom up (each imports only those above it, and pynetdicom only through
:mod:`pacsinfra.pacs.compat`):

- :mod:`.codec` — PDUs, PDV items and DIMSE command sets as bytes; one codec for
  both directions.
- :mod:`.state` — the association's phases and the PDUs each allows (PS3.8 9.2).
- :mod:`.wire` — reading PDUs from a socket (whole, or peeked) within a size limit.
- :mod:`.part10` — the file meta group a received instance is written with; reading
  a stored file's.
- :mod:`.incoming` — :class:`~.incoming.IncomingFile`, the streamed instance file.
- :mod:`.sinks` — what the service behind the SCP implements (store, find).
- :mod:`.negotiate` — is this association ours, and what does it accept.
- :mod:`.association` — the acceptor's per-association loop.
- :mod:`.requestor` — the requestor: associate, C-STORE files, release.
- :mod:`.admission` — connections that have not associated yet: slots, deadline,
  per-address cap.
- :mod:`.guard` — sockets that check every PDU header before pynetdicom reads a body.
- :mod:`.fastpath` — a new connection's fate: served here, refused, or handed to
  pynetdicom.
- :mod:`.server` — the listener: pynetdicom's server with all of the above in front.

Every PDU header is checked against ``pdu_size_limit`` (and P-DATA-TF against the
maximum PDU we announce) before its body is read, on both paths.
"""
