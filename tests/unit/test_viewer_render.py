"""The viewer's config rules and what it renders (nginx.conf, app-config.js, secrets files),
in-process; no nginx needed except where `nginx -t` checks a rendered file."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import need
from pydantic import ValidationError

from pacsinfra.errors import SecretError, UsageError
from pacsinfra.viewer import htpasswd
from pacsinfra.viewer.config import ViewerConfig
from pacsinfra.viewer.nginx import render_app_config, render_conf, render_upstream_auth
from pacsinfra.viewer.paths import Layout
from pacsinfra.viewer.runtime import prepare, users_file

BASE: dict[str, Any] = {"upstream": "http://127.0.0.1:8042/dicom-web"}


def cfg(**kw: Any) -> ViewerConfig:
    return ViewerConfig.model_validate({**BASE, **kw})


def users(env: str = "VIEWER_PW_ALICE") -> dict[str, Any]:
    return {"users": {"alice": {"password": {"env": env}}}}


# -- config ----------------------------------------------------------------------------------

def test_defaults_are_loopback_ohif_pinned() -> None:
    c = ViewerConfig()
    assert (c.product, c.bind, c.port, c.ohif.version) == ("ohif", "127.0.0.1", 3000, "3.13.2")
    assert not c.auth.enabled and not c.allow_anonymous


@pytest.mark.parametrize("bind", ["0.0.0.0", "10.1.2.3", "::", "viewer.example.org"])
def test_a_network_bind_needs_users(bind: str) -> None:
    with pytest.raises(ValidationError, match="not loopback.*auth.users"):
        cfg(bind=bind)


def test_a_network_bind_with_users_needs_tls_or_an_explicit_opt_out() -> None:
    with pytest.raises(ValidationError, match="clear text"):
        cfg(bind="0.0.0.0", auth=users())
    assert cfg(bind="0.0.0.0", auth=users(), allow_plain_http=True).warnings()
    tls = {"enabled": True, "cert_file": "/etc/v.crt", "key_file": "/etc/v.key"}
    assert cfg(bind="0.0.0.0", auth=users(), tls=tls).warnings() == []


def test_anonymous_is_allowed_loudly_and_never_with_users() -> None:
    c = cfg(bind="0.0.0.0", allow_anonymous=True)
    assert any("ANONYMOUS" in w for w in c.warnings())
    with pytest.raises(ValidationError, match="contradicts"):
        cfg(allow_anonymous=True, auth=users())
    assert cfg(bind="::1").warnings() == [] and cfg(bind="localhost").warnings() == []


@pytest.mark.parametrize(("field", "value", "match"), [
    ("product", "weasis", "ohif"),
    ("upstream", "ftp://x/dicom-web", "http"),
    ("upstream", "http://user:pw@127.0.0.1:8042", "no credentials"),
    ("upstream", "http://127.0.0.1:8042/dicom-web?x=1", "no query"),
    ("data_dir", '/var/lib/v"; include /etc/shadow; "', "not allowed"),
    ("data_dir", "/var/lib/$host", "not allowed"),
    ("site_name", "a\nb", "control"),
    ("bind", "0.0.0.0; evil", "listen on"),
    ("ohif", {"integrity": "sha1-abc"}, "sha512"),
    ("ohif", {"version": "latest"}, "npm version"),
    ("auth", {"users": {"bad:name": {"password": {"env": "X"}}}}, "pattern"),
    ("auth", {"users": {"alice": {"password": "plain"}}}, "valid dictionary"),
    ("tls", {"enabled": True}, "cert_file"),
    ("limits", {"client_max_body_size": "1 GB"}, "pattern"),
    ("unknown", 1, "Extra inputs"),
])
def test_bad_config_is_refused_with_a_reason(field: str, value: Any, match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        cfg(**{field: value})


def test_blueprint_field_names_still_mean_what_they_meant() -> None:
    c = cfg(archive="pacs-archive", gpu_required=True, port=8443,
            tls={"enabled": True, "cert_file": "/c", "key_file": "/k"})
    assert (c.archive, c.gpu_required, c.port, c.tls.enabled) == ("pacs-archive", True, 8443, True)


# -- nginx.conf ------------------------------------------------------------------------------

def render(c: ViewerConfig, tmp_path: Path, worker: str | None = None) -> str:
    return render_conf(c, Layout.of(tmp_path / "run"), tmp_path / "dist", worker_user=worker)


def test_conf_serves_the_spa_and_proxies_dicomweb(tmp_path: Path) -> None:
    conf = render(cfg(auth=users(), upstream_token={"env": "T"}), tmp_path)
    assert "try_files $uri /index.html;" in conf
    assert f'root "{tmp_path}/dist";' in conf
    assert "location /dicom-web/ {" in conf
    assert "proxy_pass http://pacsinfra_archive/dicom-web/;" in conf
    assert "server 127.0.0.1:8042;" in conf
    # login everywhere, the token only from the 0600 include, never the user's credentials
    assert 'auth_basic "PACS viewer";' in conf
    assert f'auth_basic_user_file "{tmp_path}/run/secrets/htpasswd";' in conf
    assert f'include "{tmp_path}/run/secrets/upstream-auth.conf";' in conf
    assert "Bearer" not in conf
    for header in ("X-Forwarded-Proto $scheme", "X-Forwarded-Host $http_host",
                   "X-Forwarded-Prefix /dicom-web", "Forwarded \"for=$pacsinfra_fwd_for;"
                   "proto=$scheme\"", "Host $http_host"):
        assert f"proxy_set_header {header};" in conf
    # cross-origin isolation on every location that adds headers, and caching policy
    assert conf.count('Cross-Origin-Embedder-Policy "require-corp"') == conf.count(
        'Cross-Origin-Opener-Policy "same-origin"') >= 6
    assert 'add_header Cache-Control "public, max-age=31536000, immutable" always;' in conf
    assert conf.count('add_header Cache-Control "no-cache" always;') == 3
    assert "gzip on;" in conf and "application/dicom+json" in conf
    # everything nginx writes is under the prefix, and no query strings are logged
    for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        assert f'{kind}_temp_path "{tmp_path}/run/tmp/{kind}";' in conf
    assert f'pid "{tmp_path}/run/nginx.pid";' in conf
    assert "$request_method $uri" in conf and "$request " not in conf
    assert "user " not in conf.split("events")[0]


def test_without_a_token_the_users_credentials_are_not_forwarded(tmp_path: Path) -> None:
    conf = render(cfg(auth=users()), tmp_path)
    assert 'proxy_set_header Authorization "";' in conf
    assert "upstream-auth.conf" not in conf


def test_anonymous_loopback_has_no_auth(tmp_path: Path) -> None:
    conf = render(cfg(), tmp_path)
    assert "auth_basic " not in conf.replace("auth_basic off;", "")
    assert "X-Forwarded-User" not in conf  # nobody logged in: nothing to vouch for
    assert "X-Forwarded-User $remote_user" in render(cfg(auth=users()), tmp_path)


def test_tls_https_upstream_and_limits(tmp_path: Path) -> None:
    c = cfg(bind="::", port=8443, auth=users(), upstream="https://pacs.example:8443/dicom-web",
            upstream_ca_file="/etc/pacs/ca.pem",
            tls={"enabled": True, "cert_file": "/etc/v.crt", "key_file": "/etc/v.key",
                 "ca_file": "/etc/ca.pem", "require_client_cert": True, "min_version": "1.3"},
            limits={"client_max_body_size": "2m", "proxy_read_timeout": 90})
    conf = render(c, tmp_path, worker="www-data")
    assert "listen [::]:8443 ssl http2;" in conf
    assert 'ssl_certificate "/etc/v.crt";' in conf and "ssl_protocols TLSv1.3;" in conf
    assert "ssl_verify_client on;" in conf
    assert "Strict-Transport-Security" in conf
    assert "proxy_pass https://pacsinfra_archive/dicom-web/;" in conf
    assert "server pacs.example:8443;" in conf
    assert 'proxy_ssl_trusted_certificate "/etc/pacs/ca.pem";' in conf
    assert "proxy_ssl_verify on;" in conf and 'proxy_ssl_name "pacs.example";' in conf
    assert "client_max_body_size 2m;" in conf and "proxy_read_timeout 90s;" in conf
    assert conf.splitlines()[2] == "user www-data;"


def test_the_rendered_conf_is_one_nginx_accepts(tmp_path: Path) -> None:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    need(os.access(nginx, os.X_OK), "nginx not installed (run scripts/install-system-deps.sh)")
    layout = Layout.of(tmp_path / "run")
    for d in (layout.logs, layout.secrets, *(layout.temp(k) for k in ("client_body", "proxy"))):
        d.mkdir(parents=True, exist_ok=True)
    (tmp_path / "dist").mkdir()
    layout.upstream_auth.write_text(render_upstream_auth("tok"))
    layout.conf.write_text(render_conf(cfg(auth=users(), upstream_token={"env": "T"}),
                                       layout, tmp_path / "dist"))
    done = subprocess.run([nginx, "-t", "-q", "-p", f"{layout.prefix}/", "-c", str(layout.conf),
                           "-e", "stderr"], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def test_upstream_token_include_refuses_what_nginx_would_misread() -> None:
    assert 'Authorization "Bearer abc.DEF-_~+/=";' in render_upstream_auth("abc.DEF-_~+/=")
    for bad in ('x"y', "x$y", "x y", "x;y", ""):
        with pytest.raises(ValueError) as err:
            render_upstream_auth(bad)
        assert not bad or bad not in str(err.value)


# -- app-config.js ---------------------------------------------------------------------------

def test_app_config_points_ohif_at_this_origin() -> None:
    js = render_app_config(cfg(site_name="St. Elsewhere </script><b>"))
    assert "namespace: '@ohif/extension-default.dataSourcesModule.dicomweb'" in js
    assert js.count('"/dicom-web"') == 3  # qido, wado, wado-uri roots
    assert "imageRendering: 'wadors'" in js and "thumbnailRendering: 'wadors'" in js
    assert "showStudyList: true" in js and "defaultDataSourceName: 'pacs'" in js
    assert "St. Elsewhere \\u003c/script\\u003e\\u003cb\\u003e" in js
    assert "</script>" not in js


def test_app_config_is_valid_javascript(tmp_path: Path) -> None:
    node = shutil.which("node")
    # node is not one of pacsinfra's dependencies: a laptop may lack it (CI installs it)
    need(node is not None, "node not installed (apt-get install nodejs)")
    js = render_app_config(cfg(site_name="Radiology 'North' \"B\""))
    script = tmp_path / "check.js"
    script.write_text("const window = {}; const document = {};\n" + js +
                      "\nconsole.log(JSON.stringify([window.config.dataSources[0].configuration"
                      ".qidoRoot, document.title]));\n")
    out = subprocess.run([node, str(script)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == '["/dicom-web","Radiology \'North\' \\"B\\""]'


# -- secrets and the run directory -----------------------------------------------------------

def test_htpasswd_lines_are_sha512_crypt_nginx_and_glibc_agree_on() -> None:
    line = htpasswd.line("alice", "s3cret")
    user, hashed = line.split(":", 1)
    assert user == "alice" and hashed.startswith("$6$") and "s3cret" not in line
    # the known-answer vector of Drepper's SHA-crypt specification
    assert htpasswd.sha512_crypt("Hello world!", "saltstring") == (
        "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdF"
        "CoEOfaS35inz1")
    assert htpasswd.sha512_crypt("Hello world!", "saltstringsaltstring", rounds=10000) == (
        "$6$rounds=10000$saltstringsaltst$OW1/O6BYHV6BcXZu8QVeXbDWra3Oeqh0sbHbbMCVNSnCM/UrjmM0Dp8"
        "vOuZeHBy/YTBmSK6H9qs/y3RnOaw5v.")


def test_htpasswd_files_must_hold_hashes() -> None:
    assert htpasswd.check_file("# admins\nbob:{SSHA}abc\ncarol:$2y$05$x\n\n") == ["bob", "carol"]
    with pytest.raises(ValueError, match="line 1 .*plain passwords are refused"):
        htpasswd.check_file("bob:{PLAIN}hunter2")
    with pytest.raises(ValueError, match="line 2: expected user:hash") as err:
        htpasswd.check_file("bob:{SHA}x\nhunter2\n")
    assert "hunter2" not in str(err.value)


def test_users_file_resolves_references_and_refuses_bad_ones(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    extra = tmp_path / "htpasswd"
    extra.write_text("bob:{SSHA}abcdef\n")
    monkeypatch.setenv("VIEWER_PW_ALICE", "pw-alice")
    text, names = users_file(cfg(auth={**users(), "htpasswd": {"file": str(extra)}}))
    assert names == ["alice", "bob"] and "pw-alice" not in text and text.endswith("\n")
    monkeypatch.delenv("VIEWER_PW_ALICE")
    with pytest.raises(SecretError, match="VIEWER_PW_ALICE is not set"):
        users_file(cfg(auth=users()))
    monkeypatch.setenv("VIEWER_PW_ALICE", "")
    with pytest.raises(UsageError, match="empty"):
        users_file(cfg(auth=users()))
    extra.write_text("alice:{SSHA}abcdef\n")
    monkeypatch.setenv("VIEWER_PW_ALICE", "x")
    with pytest.raises(UsageError, match="both"):
        users_file(cfg(auth={**users(), "htpasswd": {"file": str(extra)}}))


def _staged_dist(tmp_path: Path) -> dict[str, Any]:
    """A config whose OHIF cache already holds an unpacked build (no download)."""
    from pacsinfra.viewer import ohif
    from pacsinfra.viewer.config import OhifPackage

    pkg = OhifPackage(cache_dir=str(tmp_path / "cache"))
    dist = ohif.dist_dir(pkg)
    dist.mkdir(parents=True)
    (dist / "index.html").write_text('<div id="root"></div>')
    (dist.parent / ".complete").write_text(ohif.PINNED_INTEGRITY[pkg.version] + "\n")
    return {"cache_dir": str(tmp_path / "cache")}


def test_prepare_writes_secrets_0600_and_nothing_secret_elsewhere(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIEWER_PW_ALICE", "pw-alice-123")
    monkeypatch.setenv("VIEWER_TOKEN", "tok-abc-456")
    c = cfg(auth=users(), upstream_token={"env": "VIEWER_TOKEN"}, data_dir=str(tmp_path / "run"),
            ohif=_staged_dist(tmp_path))
    prepared = prepare(c)
    lay = prepared.layout
    mode = {p: stat.S_IMODE(p.stat().st_mode) for p in lay.prefix.rglob("*")}
    assert mode[lay.htpasswd] == mode[lay.upstream_auth] == 0o600
    assert mode[lay.secrets] == 0o700
    assert mode[lay.conf] == mode[lay.access_log] == mode[lay.error_log] == 0o640
    assert "tok-abc-456" in lay.upstream_auth.read_text()
    for path in lay.prefix.rglob("*"):
        if path.is_file() and path.parent != lay.secrets:
            text = path.read_text()
            assert "tok-abc-456" not in text and "pw-alice-123" not in text, path
    assert prepared.users == ("alice",)
    # a second start without a token or users removes the stale secrets
    prepare(cfg(data_dir=str(tmp_path / "run"), ohif=_staged_dist(tmp_path / "again")))
    assert not lay.htpasswd.exists() and not lay.upstream_auth.exists()


def test_prepare_names_the_reference_not_the_value(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIEWER_TOKEN", 'has "quotes" and spaces')
    c = cfg(upstream_token={"env": "VIEWER_TOKEN"}, data_dir=str(tmp_path / "run"),
            ohif=_staged_dist(tmp_path))
    with pytest.raises(SecretError) as err:
        prepare(c)
    assert "environment variable VIEWER_TOKEN" in str(err.value)
    assert "quotes" not in str(err.value)


def test_the_viewer_package_stays_out_of_the_deployment_layers() -> None:
    code = ("import sys, pacsinfra.viewer.serve, pacsinfra.viewer.check, pacsinfra.cli.viewer_cmds;"
            "print(sorted(m for m in sys.modules if m.split('.')[:2] in "
            "[['pacsinfra', x] for x in ('drivers', 'deploy', 'services', 'plan', 'apply', "
            "'blueprint')]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=dict(os.environ))
    assert out.stdout.strip() == "[]"
