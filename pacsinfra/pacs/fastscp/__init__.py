"""A streaming storage SCP: the C-STORE receive path of the archive and the router.

pynetdicom negotiates and serves everything else (C-FIND, C-MOVE, C-GET, TLS, role
selection, user identity). An association that proposes only storage and
verification over plain TCP is served here instead, on its own thread, with no
queue hand-offs and no polling: each P-DATA PDU is read into one buffer, and the
data set fragments are written to the instance's temporary file *as they arrive*
(the kernel told to start writing them back every MiB), so when the last fragment
lands only a short ``fsync`` remains; the sink (the archive's, the router's) reads
the attributes it needs back through an mmap meanwhile, then renames, indexes or
queues, and answers. Nothing is answered Success before the sink says so.

- :mod:`.pdu` — reading PDUs from a socket; encoding the few this side sends.
- :mod:`.command` — DIMSE command sets (Implicit VR Little Endian, group 0000).
- :mod:`.negotiate` — is this association ours, and what does it accept.
- :mod:`.incoming` — :class:`~.incoming.IncomingFile`, the streamed temporary file.
- :mod:`.association` — the per-association loop.
- :mod:`.server` — a pynetdicom server that hands storage-only associations to it.
"""
