"""Render the viewer's ``nginx.conf``, its secret include files and OHIF's ``app-config.js``.

One origin, so the browser needs no CORS: OHIF's files at ``/`` (any unknown path falls
back to ``index.html``, OHIF routes in the browser) and the archive's DICOMweb at
``/dicom-web/``. When users are configured every path needs a login (``auth_basic``),
and only then does the proxy add the archive's bearer token — from an include file in
``secrets/`` (0600), never from ``nginx.conf``. Everything nginx writes (pid, logs, temp
files) is under the viewer's ``data_dir``, so it runs as an unprivileged user.

The functions here only build text; :mod:`pacsinfra.viewer.runtime` writes the files.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import urlsplit

from pacsinfra import __version__
from pacsinfra.viewer.config import ViewerConfig
from pacsinfra.viewer.paths import TEMP_KINDS, Layout

#: where the archive's DICOMweb appears on the viewer's origin
DICOMWEB_PATH = "/dicom-web"
# Bundles whose file names carry a content hash (``2493.bundle.c4af70e46357151f.js``,
# ``0ddf166f7a343eda.wasm``): a new release has new names, so they are cached for a year.
HASHED_ASSET = r"[./][0-9a-f]{16}\.(?:js|wasm|woff2?|css)$"
# nginx's own mime.types lives in /etc/nginx, which an unprivileged prefix does not use.
MIME_TYPES = {
    "text/html": "html htm",
    "text/css": "css",
    "application/javascript": "js mjs",
    "application/json": "json map",
    "application/manifest+json": "webmanifest",
    "application/wasm": "wasm",
    "application/xml": "xml",
    "text/plain": "txt",
    "image/svg+xml": "svg",
    "image/png": "png",
    "image/jpeg": "jpg jpeg",
    "image/gif": "gif",
    "image/x-icon": "ico",
    "font/woff": "woff",
    "font/woff2": "woff2",
    "font/ttf": "ttf",
}
GZIP_TYPES = ("text/css application/javascript application/json application/manifest+json "
              "application/wasm image/svg+xml application/dicom+json application/xml")
# A Host header that is a plain host[:port]: it is forwarded to the archive and logged.
_HOST_OK = r"^[A-Za-z0-9.:\[\]-]+$"
# RFC 6750 b64token: also keeps the token from closing the quoted nginx string or being
# read as a $variable.
_TOKEN_OK = re.compile(r"^[A-Za-z0-9\-._~+/]+=*$")


def q(value: str | Path) -> str:
    """``value`` as a double-quoted nginx string (paths and names are checked on input)."""
    text = str(value)
    if any(c in text for c in '"\\$\n\r'):
        raise ValueError(f"{text!r} cannot be written into nginx.conf")
    return f'"{text}"'


def listen_address(cfg: ViewerConfig) -> str:
    """``host:port`` for nginx's ``listen`` (IPv6 literals in brackets)."""
    host = cfg.bind
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{cfg.port}"


def security_headers(cfg: ViewerConfig) -> list[str]:
    """``add_header`` lines every response carries.

    nginx drops inherited ``add_header``s in a block that adds its own, so each location
    repeats these. COOP+COEP make the page cross-origin isolated, which OHIF needs for
    SharedArrayBuffer (its 3D/volume rendering); CORP lets the isolated page load our files.
    """
    out = [
        'add_header Cross-Origin-Opener-Policy "same-origin" always;',
        'add_header Cross-Origin-Embedder-Policy "require-corp" always;',
        'add_header Cross-Origin-Resource-Policy "same-origin" always;',
        'add_header X-Content-Type-Options "nosniff" always;',
        'add_header X-Frame-Options "SAMEORIGIN" always;',
        'add_header Referrer-Policy "same-origin" always;',
    ]
    if cfg.tls.enabled:
        out.append('add_header Strict-Transport-Security "max-age=31536000" always;')
    return out


def _block(header: str, body: list[str], indent: str = "    ") -> list[str]:
    return [f"{header} {{", *(f"{indent}{line}" for line in body), "}"]


def _tls(cfg: ViewerConfig) -> list[str]:
    if not cfg.tls.enabled:
        return []
    protocols = "TLSv1.3" if cfg.tls.min_version == "1.3" else "TLSv1.2 TLSv1.3"
    out = [
        f"ssl_certificate {q(cfg.tls.cert_file or '')};",
        f"ssl_certificate_key {q(cfg.tls.key_file or '')};",
        f"ssl_protocols {protocols};",
        "ssl_prefer_server_ciphers off;",
        "ssl_session_cache shared:pacsinfra_viewer:10m;",
        "ssl_session_timeout 1h;",
        "ssl_session_tickets off;",
    ]
    if cfg.tls.require_client_cert:
        out += [f"ssl_client_certificate {q(cfg.tls.ca_file or '')};", "ssl_verify_client on;"]
    return out


def _proxy(cfg: ViewerConfig, layout: Layout) -> list[str]:
    """The ``/dicom-web/`` location: forward to the archive, read-only."""
    assert cfg.upstream is not None
    up = urlsplit(cfg.upstream)
    path = up.path.rstrip("/") + "/"
    lim = cfg.limits
    body = [
        # A viewer reads. Writes would need the archive's write scope. (Not limit_except:
        # its 403 would land in @archive_refused below.)
        'if ($request_method !~ "^(GET|HEAD)$") { return 405; }',
        f"proxy_pass {up.scheme}://pacsinfra_archive{path};",
        "proxy_http_version 1.1;",
        'proxy_set_header Connection "";',
        # The archive builds BulkDataURIs and Retrieve URLs from these, so they must name
        # the viewer's origin: the browser's own Host (RFC 7239 5.3: then Forwarded needs
        # no host=, whose quoted host:port form Orthanc 1.10 copies quotes and all), the
        # scheme, and the path prefix the archive is mounted under here.
        "proxy_set_header Host $http_host;",
        "proxy_set_header X-Forwarded-For $remote_addr;",
        "proxy_set_header X-Real-IP $remote_addr;",
        "proxy_set_header X-Forwarded-Proto $scheme;",
        "proxy_set_header X-Forwarded-Host $http_host;",
        "proxy_set_header X-Forwarded-Port $server_port;",
        f"proxy_set_header X-Forwarded-Prefix {DICOMWEB_PATH};",
        'proxy_set_header Forwarded "for=$pacsinfra_fwd_for;proto=$scheme";',
    ]
    if cfg.auth.enabled:
        # Who logged in, for the archive's audit trail. (Without users, $remote_user is
        # whatever a client's Authorization header claims: then nothing is sent.)
        body.append("proxy_set_header X-Forwarded-User $remote_user;")
    if cfg.upstream_token is not None:
        # Reached only past auth_basic (server level) when users are configured; the token
        # itself sits in a 0600 file so nginx.conf, plans and logs never hold it.
        body.append(f"include {q(layout.upstream_auth)};")
    else:
        # Never pass the user's own basic-auth credentials on to the archive.
        body.append('proxy_set_header Authorization "";')
    body += [
        f"proxy_connect_timeout {lim.proxy_connect_timeout:g}s;",
        f"proxy_read_timeout {lim.proxy_read_timeout:g}s;",
        f"proxy_send_timeout {lim.proxy_read_timeout:g}s;",
        # The archive's refusal of *our* token is a server-side fault, not the user's:
        # a 401 would make the browser ask the user for a password that cannot help.
        "proxy_intercept_errors on;",
        "error_page 401 403 = @archive_refused;",
        *security_headers(cfg),
        'add_header Cache-Control "no-store" always;',
    ]
    if up.scheme == "https":
        body += [
            "proxy_ssl_verify on;",
            "proxy_ssl_verify_depth 3;",
            f"proxy_ssl_trusted_certificate "
            f"{q(cfg.upstream_ca_file or '/etc/ssl/certs/ca-certificates.crt')};",
            "proxy_ssl_server_name on;",
            f"proxy_ssl_name {q(up.hostname or '')};",
            "proxy_ssl_protocols TLSv1.2 TLSv1.3;",
        ]
    return _block(f"location {DICOMWEB_PATH}/", body)


def _refused(headers: list[str]) -> list[str]:
    """Where ``/dicom-web/`` sends a 401 or 403.

    ``error_page`` also catches auth_basic's own 401 (a user's wrong password): that one
    has no upstream status and stays a 401. A 401/403 *from the archive* means it
    refused the viewer's token — a server fault, so 502.
    """
    return _block("location @archive_refused", [
        "default_type application/json;",
        *_block('if ($upstream_status = "")', [
            # (auth_basic's WWW-Authenticate challenge is still on the response)
            *headers, 'return 401 "{\\"error\\": \\"log in to read images\\"}\\n";']),
        *headers,
        'return 502 "{\\"error\\": \\"the archive refused the viewer\'s token\\"}\\n";'])


def upstream_server(cfg: ViewerConfig) -> str:
    """``host:port`` of the archive's DICOMweb for nginx's ``upstream`` block."""
    assert cfg.upstream is not None
    up = urlsplit(cfg.upstream)
    port = up.port or (443 if up.scheme == "https" else 80)
    host = up.hostname or ""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def render_conf(cfg: ViewerConfig, layout: Layout, dist: Path, *,
                worker_user: str | None = None) -> str:
    """The complete ``nginx.conf``. ``worker_user``: the ``user`` directive's argument
    (``name [group]``; only meaningful when nginx starts as root); ``dist`` is OHIF's
    unpacked build."""
    if cfg.upstream is None:
        raise ValueError("upstream is not set: the archive's DICOMweb URL to proxy")
    lim = cfg.limits
    headers = security_headers(cfg)
    mime = [f"{kind} {exts};" for kind, exts in MIME_TYPES.items()]
    listen = f"listen {listen_address(cfg)}" + (" ssl http2;" if cfg.tls.enabled else ";")
    auth = []
    if cfg.auth.enabled:
        auth = [f"auth_basic {q(cfg.auth.realm)};",
                f"auth_basic_user_file {q(layout.htpasswd)};"]
    server = [
        listen,
        "server_name _;",
        *_tls(cfg),
        # Odd Host headers would reach the archive, its URLs and redirects.
        f'if ($http_host !~ "{_HOST_OK}") {{ return 400; }}',
        f"root {q(dist)};",
        "index index.html;",
        *auth,
        "",
        # For a supervisor or load balancer: says nothing but that nginx answers.
        *_block("location = /healthz", [
            "auth_basic off;", "access_log off;", "default_type text/plain;",
            'return 200 "ok\\n";']),
        *_block("location = /app-config.js", [
            f"alias {q(layout.app_config)};", *headers,
            'add_header Cache-Control "no-cache" always;']),
        *_block("location = /index.html", [
            *headers, 'add_header Cache-Control "no-cache" always;']),
        *_block(f'location ~ "{HASHED_ASSET}"', [
            "try_files $uri =404;", *headers,
            'add_header Cache-Control "public, max-age=31536000, immutable" always;']),
        *_block("location /", [
            # OHIF routes in the browser (/viewer?StudyInstanceUIDs=...): unknown paths get
            # the app; other files revalidate (ETag) as their names carry no hash.
            "try_files $uri /index.html;", *headers,
            'add_header Cache-Control "no-cache" always;']),
        *_proxy(cfg, layout),
        *_refused(headers),
    ]
    temp = [f"{kind}_temp_path {q(layout.temp(kind))};" for kind in TEMP_KINDS]
    http = [
        *_block("types", mime),
        "default_type application/octet-stream;",
        "sendfile on;",
        "tcp_nopush on;",
        "server_tokens off;",
        "absolute_redirect off;",
        *temp,
        # No query strings in the log: QIDO queries can carry patient names and IDs.
        "log_format pacsinfra '$remote_addr $remote_user [$time_local] "
        "\"$request_method $uri\" $status $body_bytes_sent $request_time';",
        f"access_log {q(layout.access_log)} pacsinfra;",
        f"client_max_body_size {lim.client_max_body_size};",
        f"client_body_timeout {lim.client_body_timeout:g}s;",
        f"client_header_timeout {lim.client_header_timeout:g}s;",
        f"send_timeout {lim.send_timeout:g}s;",
        f"keepalive_timeout {lim.keepalive_timeout:g}s;",
        "gzip on;",
        "gzip_vary on;",
        "gzip_proxied any;",
        "gzip_comp_level 4;",
        "gzip_min_length 1024;",
        f"gzip_types {GZIP_TYPES};",
        # RFC 7239 wants IPv6 client addresses bracketed and quoted.
        *_block("map $remote_addr $pacsinfra_fwd_for", [
            '~^[0-9.]+$ $remote_addr;', 'default "\\"[$remote_addr]\\"";']),
        *_block("upstream pacsinfra_archive", [
            f"server {upstream_server(cfg)};", "keepalive 16;"]),
        *_block("server", server),
    ]
    top = [
        f"# Rendered by pacsinfra {__version__} from the viewer's config: do not edit;",
        "# change the config and restart `pacsinfra viewer serve`.",
    ]
    if worker_user:
        top.append(f"user {worker_user};")
    top += [
        f"worker_processes {cfg.worker_processes};",
        f"pid {q(layout.pid)};",
        f"error_log {q(layout.error_log)} warn;",
        "error_log stderr warn;",
        *_block("events", [f"worker_connections {lim.worker_connections};"]),
        *_block("http", http),
    ]
    return "\n".join(top) + "\n"


def render_upstream_auth(token: str) -> str:
    """The include file that presents the archive's bearer token (written 0600)."""
    if not _TOKEN_OK.match(token):
        raise ValueError("the archive token is not a bearer token (RFC 6750: letters, "
                         "digits and -._~+/ with optional trailing =)")
    return ("# The archive's bearer token, sent on the viewer's DICOMweb requests only.\n"
            f'proxy_set_header Authorization "Bearer {token}";\n')


def _js_string(value: str) -> str:
    """A JavaScript string literal of ``value`` that cannot break out of its script."""
    text = json.dumps(value, ensure_ascii=True)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_app_config(cfg: ViewerConfig) -> str:
    """OHIF's ``app-config.js``: one DICOMweb data source on this origin, the site's name."""
    name = _js_string(cfg.site_name)
    root = _js_string(DICOMWEB_PATH)
    return f"""// Rendered by pacsinfra {__version__} from the viewer's config: do not edit.
window.config = {{
  name: 'pacsinfra',
  routerBasename: '/',
  extensions: [],
  modes: [],
  customizationService: {{}},
  showStudyList: true,
  maxNumberOfWebWorkers: 3,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: true,
  showLoadingIndicator: true,
  strictZSpacingForVolumeViewport: true,
  // Browsers open 6 connections per origin over HTTP/1.1 (many more with TLS + HTTP/2).
  maxNumRequests: {{ interaction: 100, thumbnail: 75, prefetch: 25 }},
  showErrorDetails: 'production',
  whiteLabeling: {{
    createLogoComponentFn: function (React) {{
      return React.createElement('span', {{
        'data-cy': 'pacsinfra-site-name',
        className: 'text-primary-light text-lg font-semibold',
      }}, {name});
    }},
  }},
  defaultDataSourceName: 'pacs',
  dataSources: [
    {{
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'pacs',
      configuration: {{
        friendlyName: {name},
        name: 'pacs',
        qidoRoot: {root},
        wadoRoot: {root},
        wadoUriRoot: {root},
        qidoSupportsIncludeField: true,
        supportsReject: false,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: false,
        supportsWildcard: true,
        staticWado: false,
        singlepart: false,
        omitQuotationForMultipartRequest: true,
        bulkDataURI: {{ enabled: true, relativeResolution: 'studies' }},
      }},
    }},
  ],
}};
document.title = {name};
"""


__all__ = [
    "DICOMWEB_PATH",
    "HASHED_ASSET",
    "listen_address",
    "render_app_config",
    "render_conf",
    "render_upstream_auth",
    "security_headers",
    "upstream_server",
]
