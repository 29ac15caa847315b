"""The web viewer: OHIF's static build served by nginx, with the archive's DICOMweb behind it.

One origin serves both the viewer's files (``/``) and a reverse proxy to the archive's
DICOMweb (``/dicom-web/``); users log in with HTTP basic auth, and the proxy presents the
archive's bearer token on their behalf. Modules, each with one job:

- :mod:`pacsinfra.viewer.config` — :class:`ViewerConfig`, what ``viewer.yaml`` holds;
- :mod:`pacsinfra.viewer.ohif` — fetch, verify and unpack the pinned ``@ohif/app``;
- :mod:`pacsinfra.viewer.htpasswd` — password hashes nginx checks;
- :mod:`pacsinfra.viewer.nginx` — ``nginx.conf`` and ``app-config.js`` from a config;
- :mod:`pacsinfra.viewer.runtime` — the run directory: rendered files and secrets (0600);
- :mod:`pacsinfra.viewer.serve` — prepare everything, then run nginx in the foreground;
- :mod:`pacsinfra.viewer.check` — is a running viewer healthy (page, proxy, refusal)?

Nothing here imports the deployment layers (drivers, deploy, plan, apply).
"""

from __future__ import annotations

from pacsinfra.viewer.config import ViewerConfig

__all__ = ["ViewerConfig"]
