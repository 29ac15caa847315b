"""The archive's DICOMweb server (PS3.18), one module per job.

``context`` (what every handler reaches), ``errors`` (refusals: JSON reason, status,
log and audit), ``auth`` and ``oidc`` (bearer tokens, scopes, JWTs), ``guard``
(connection-level limits and timeouts), ``qido``, ``wado``, ``stow`` with
``multipart`` and ``spool`` (streamed uploads), ``admin`` (DELETE, metrics). The
application is put together in :mod:`pacsinfra.pacs.archive.dicomweb`.
"""
