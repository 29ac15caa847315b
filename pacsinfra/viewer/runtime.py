"""Lay out a viewer's run directory: resolve its secrets and write every file nginx reads.

:func:`prepare` is the one call: the OHIF build from the cache (fetched and verified on
first use), then under ``data_dir`` the directories (secrets 0700), ``htpasswd`` and the
token include (0600, resolved now from their references), ``app-config.js`` and
``nginx.conf`` (no secrets, 0640), and the log files (0640). It is idempotent and rewrites
everything, so a restart picks up a rotated password or token.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
from dataclasses import dataclass
from pathlib import Path

from pacsinfra.errors import SecretError, UsageError
from pacsinfra.fsutil import write_atomic
from pacsinfra.viewer import htpasswd, nginx, ohif
from pacsinfra.viewer.config import ViewerConfig
from pacsinfra.viewer.errors import ViewerError
from pacsinfra.viewer.paths import TEMP_KINDS, Layout


@dataclass(frozen=True)
class Prepared:
    """A viewer ready to start: where its files are and who nginx's workers run as."""

    config: ViewerConfig
    layout: Layout
    dist: Path  # OHIF's unpacked build (served read-only)
    worker_user: str | None  # who nginx's workers run as; None when not started as root
    users: tuple[str, ...]  # who can log in (names only)


def users_file(cfg: ViewerConfig) -> tuple[str, list[str]]:
    """(htpasswd file contents, user names) from ``auth``; secrets resolved now.

    Raises SecretError for an unresolvable reference, UsageError for an empty password,
    a malformed htpasswd file or a user defined twice.
    """
    lines: list[str] = []
    names: list[str] = []
    for name, entry in cfg.auth.users.items():
        password = entry.password.resolve()
        if not password:
            raise UsageError(f"auth.users.{name}.password ({entry.password.describe()}) "
                             "is empty")
        lines.append(htpasswd.line(name, password))
        names.append(name)
    if cfg.auth.htpasswd is not None:
        text = cfg.auth.htpasswd.resolve()
        try:
            extra = htpasswd.check_file(text)
        except ValueError as exc:
            raise UsageError(f"auth.htpasswd ({cfg.auth.htpasswd.describe()}): {exc}") from None
        twice = sorted(set(extra) & set(names))
        if twice:
            raise UsageError(f"defined in both auth.users and auth.htpasswd: {', '.join(twice)}")
        lines += [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        names += extra
    return "".join(f"{ln}\n" for ln in lines), names


def worker_account(cfg: ViewerConfig) -> str | None:
    """nginx's ``user`` directive: only when started as root (otherwise nginx ignores it).

    As root, workers run as ``worker_user`` when set; else as root too (nginx's default,
    ``nobody``, could read neither the secrets nor a build cached in root's home) — the
    caller warns about it.
    """
    if os.geteuid() != 0:
        return None
    return cfg.worker_user or "root"


def _dirs(layout: Layout) -> None:
    for path, mode in ((layout.prefix, 0o750), (layout.secrets, 0o700), (layout.logs, 0o750),
                       (layout.tmp, 0o700), *((layout.temp(k), 0o700) for k in TEMP_KINDS)):
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(mode)


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _account(user: str | None) -> pwd.struct_passwd | None:
    """The worker account when it is not root (None: nothing to hand over)."""
    if user is None or user == "root":
        return None
    try:
        return pwd.getpwnam(user)
    except KeyError:
        raise UsageError(f"worker_user {user!r} is not an account on this machine") from None


def _hand_over(layout: Layout, account: pwd.struct_passwd | None) -> None:
    """Let root-started nginx's workers read what they read per request, and no more.

    The directories stay root's (group: the worker's, traverse only), so a worker can
    never replace nginx.conf or the token include that root's master reads on reload.
    The worker owns only htpasswd (0600, read on every login) and the temp directories.
    """
    if account is None:
        return
    uid, gid = account.pw_uid, account.pw_gid
    os.chown(layout.prefix, 0, gid)  # 0750: the worker reaches app-config.js and logs
    os.chown(layout.secrets, 0, gid)
    layout.secrets.chmod(0o710)
    if layout.htpasswd.exists():
        os.chown(layout.htpasswd, uid, gid)
    for kind in TEMP_KINDS:
        os.chown(layout.temp(kind), uid, gid)
    os.chown(layout.tmp, 0, gid)


def _check_readable(dist: Path, account: pwd.struct_passwd | None) -> None:
    """UsageError when the worker account cannot reach OHIF's files (e.g. a build cached
    in root's home): nginx would start and answer 403 to every page."""
    if account is None:
        return
    groups = {account.pw_gid} | {g.gr_gid for g in grp.getgrall()
                                  if account.pw_name in g.gr_mem}
    for path in [*reversed(dist.parents), dist, dist / "index.html"]:
        st = path.stat()
        need = 0o1 if path.is_dir() else 0o4  # traverse directories, read the file
        if st.st_uid == account.pw_uid:
            ok = st.st_mode & (need << 6)
        elif st.st_gid in groups:
            ok = st.st_mode & (need << 3)
        else:
            ok = st.st_mode & need
        if not ok:
            raise UsageError(f"nginx's workers run as {account.pw_name} but cannot read "
                             f"OHIF's files under {dist} ({path} is closed to them): set "
                             "ohif.cache_dir to a directory they can read")


def prepare(cfg: ViewerConfig) -> Prepared:
    """Everything nginx needs, written under ``cfg.data_dir``; see the module docstring.

    Raises UsageError (bad config), SecretError (a reference cannot be read) or
    ViewerError (OHIF cannot be had, a directory cannot be written).
    """
    if cfg.upstream is None:
        raise UsageError("upstream is not set: give the archive's DICOMweb URL "
                         "(e.g. http://127.0.0.1:8042/dicom-web)")
    dist = ohif.ensure(cfg.ohif)
    layout = Layout.of(cfg.data_dir)
    worker = worker_account(cfg)
    account = _account(worker)
    _check_readable(dist, account)
    try:
        _dirs(layout)
        users: list[str] = []
        if cfg.auth.enabled:
            text, users = users_file(cfg)
            write_atomic(layout.htpasswd, text, mode=0o600)
        else:
            _remove(layout.htpasswd)
        if cfg.upstream_token is not None:
            token = cfg.upstream_token.resolve()
            try:
                include = nginx.render_upstream_auth(token)
            except ValueError as exc:
                raise SecretError(f"upstream_token ({cfg.upstream_token.describe()}): "
                                  f"{exc}") from None
            write_atomic(layout.upstream_auth, include, mode=0o600)
        else:
            _remove(layout.upstream_auth)
        write_atomic(layout.app_config, nginx.render_app_config(cfg), mode=0o644)
        directive = worker
        if account is not None:  # nginx's default group is the user's name: not on Debian
            directive = f"{account.pw_name} {grp.getgrgid(account.pw_gid).gr_name}"
        conf = nginx.render_conf(cfg, layout, dist, worker_user=directive)
        write_atomic(layout.conf, conf, mode=0o640)
        for log in (layout.access_log, layout.error_log):
            # nginx appends to existing files and keeps their mode; new ones would get 0644
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
            os.close(fd)
            log.chmod(0o640)
        _hand_over(layout, account)
    except OSError as exc:
        raise ViewerError(f"cannot write the viewer's files under {layout.prefix}: "
                          f"{exc.strerror or exc}") from None
    return Prepared(cfg, layout, dist, worker, tuple(users))


__all__ = ["Prepared", "prepare", "users_file", "worker_account"]
