"""Run a viewer: prepare its files, check nginx accepts them, then become nginx.

``pacsinfra viewer serve`` ends in :func:`os.execv` of ``nginx -p PREFIX -c CONF -e stderr
-g 'daemon off;'``: the process a supervisor or systemd started *is* nginx's master from
then on, so SIGTERM (fast stop), SIGQUIT (graceful stop) and SIGHUP (reload the files
already written) reach it directly, and its exit status is the service's.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess

from pacsinfra.viewer.config import ViewerConfig
from pacsinfra.viewer.errors import ViewerError
from pacsinfra.viewer.paths import Layout
from pacsinfra.viewer.runtime import Prepared, prepare

LOG = logging.getLogger("pacsinfra.viewer")
# Debian installs nginx in /usr/sbin, which is not on an unprivileged user's PATH.
_NGINX_FALLBACKS = ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")


def find_nginx() -> str:
    """The nginx executable: ``$PACSINFRA_NGINX``, then PATH, then the usual sbin paths."""
    given = os.environ.get("PACSINFRA_NGINX")
    if given:
        if not os.access(given, os.X_OK):
            raise ViewerError(f"PACSINFRA_NGINX={given} is not an executable")
        return given
    found = shutil.which("nginx")
    if found:
        return found
    for path in _NGINX_FALLBACKS:
        if os.access(path, os.X_OK):
            return path
    raise ViewerError("nginx is not installed (Debian: apt-get install nginx-light)")


def nginx_argv(layout: Layout, nginx: str | None = None) -> list[str]:
    """The command that runs this viewer's nginx in the foreground."""
    return [nginx or find_nginx(), "-p", f"{layout.prefix}/", "-c", str(layout.conf),
            "-e", "stderr", "-g", "daemon off;"]


def test_config(layout: Layout, nginx: str | None = None) -> None:
    """``nginx -t`` on the rendered files; ViewerError with nginx's words when it refuses."""
    argv = nginx_argv(layout, nginx)
    try:
        done = subprocess.run([*argv, "-t", "-q"], capture_output=True, text=True, timeout=30,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ViewerError(f"cannot run {argv[0]}: {exc}") from None
    if done.returncode != 0:
        said = (done.stderr or done.stdout).strip()
        raise ViewerError(f"nginx refuses the viewer's configuration {layout.conf}:\n{said}")


def announce(prepared: Prepared) -> None:
    """Log what is about to be served, and loudly, every risk the config accepts."""
    cfg = prepared.config
    for text in cfg.warnings():
        LOG.warning("%s", text)
    if prepared.worker_user == "root":
        LOG.warning("started as root without worker_user: nginx's workers run as root too; "
                    "run the viewer as an unprivileged account (or set worker_user)")
    who = f"users: {', '.join(prepared.users)}" if prepared.users else "no login (loopback)"
    if cfg.allow_anonymous:
        who = "ANONYMOUS"
    LOG.info("OHIF %s for %s on %s://%s:%d (%s), DICOMweb %s", cfg.ohif.version,
             cfg.site_name, cfg.scheme, cfg.bind, cfg.port, who, cfg.upstream)


def serve(cfg: ViewerConfig) -> None:
    """Prepare, check, and exec nginx (never returns unless it raises ViewerError)."""
    prepared = prepare(cfg)
    nginx = find_nginx()
    test_config(prepared.layout, nginx)
    announce(prepared)
    argv = nginx_argv(prepared.layout, nginx)
    os.umask(0o027)  # what nginx creates (rotated logs, temp files) stays private
    logging.shutdown()
    try:
        os.execv(argv[0], argv)
    except OSError as exc:
        raise ViewerError(f"cannot run {argv[0]}: {exc.strerror}") from None


__all__ = ["announce", "find_nginx", "nginx_argv", "serve", "test_config"]
