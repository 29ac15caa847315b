"""htpasswd lines nginx's ``auth_basic_user_file`` accepts: hashing and checking them.

Passwords are hashed with SHA-512 crypt (``$6$``, Drepper's SHA-crypt specification),
which nginx verifies through the C library's ``crypt(3)``. It is implemented here
because Python's ``crypt`` module is deprecated (gone in 3.13) and passlib is not a
dependency. The salt is random per line, so a rewritten file differs each start.
"""

from __future__ import annotations

import hashlib
import re
import secrets

_ITOA64 = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# The digest bytes in the order SHA-512 crypt encodes them, three at a time.
_ORDER = [(0, 21, 42), (22, 43, 1), (44, 2, 23), (3, 24, 45), (25, 46, 4), (47, 5, 26),
          (6, 27, 48), (28, 49, 7), (50, 8, 29), (9, 30, 51), (31, 52, 10), (53, 11, 32),
          (12, 33, 54), (34, 55, 13), (56, 14, 35), (15, 36, 57), (37, 58, 16),
          (59, 17, 38), (18, 39, 60), (40, 61, 19), (62, 20, 41)]
DEFAULT_ROUNDS = 5000
# Hash formats nginx checks (crypt(3) on glibc, plus its own {SHA}/{SSHA}); {PLAIN} would
# keep a password readable in the file, so it is refused.
_ACCEPTED = re.compile(r"^(\$(1|5|6|2[aby]|y)\$|\{SHA\}|\{SSHA\})")
_USER = re.compile(r"^[^:\s#][^:\s]{0,63}$")


def _b64(b2: int, b1: int, b0: int, n: int) -> str:
    w = (b2 << 16) | (b1 << 8) | b0
    out = []
    for _ in range(n):
        out.append(_ITOA64[w & 0x3F])
        w >>= 6
    return "".join(out)


def sha512_crypt(password: str, salt: str | None = None, rounds: int = DEFAULT_ROUNDS) -> str:
    """``$6$[rounds=N$]salt$hash`` of ``password`` (a random 16-character salt by default)."""
    if salt is None:
        salt = "".join(secrets.choice(_ITOA64) for _ in range(16))
    salt = salt[:16]
    if not 1000 <= rounds <= 999_999_999:
        raise ValueError("SHA-512 crypt rounds are 1000..999999999")
    p, s = password.encode("utf-8"), salt.encode("ascii")
    b = hashlib.sha512(p + s + p).digest()
    a = hashlib.sha512(p + s)
    n = len(p)
    while n > 64:
        a.update(b)
        n -= 64
    a.update(b[:n])
    n = len(p)
    while n:
        a.update(b if n & 1 else p)
        n >>= 1
    da = a.digest()
    dp = hashlib.sha512(p * len(p)).digest()
    p_seq = (dp * (len(p) // 64 + 1))[:len(p)]
    ds = hashlib.sha512(s * (16 + da[0])).digest()
    s_seq = ds[:len(s)]
    c = da
    for i in range(rounds):
        h = hashlib.sha512(p_seq if i & 1 else c)
        if i % 3:
            h.update(s_seq)
        if i % 7:
            h.update(p_seq)
        h.update(c if i & 1 else p_seq)
        c = h.digest()
    encoded = "".join(_b64(c[x], c[y], c[z], 4) for x, y, z in _ORDER) + _b64(0, 0, c[63], 2)
    head = "$6$" if rounds == DEFAULT_ROUNDS else f"$6$rounds={rounds}$"
    return f"{head}{salt}${encoded}"


def line(user: str, password: str) -> str:
    """One htpasswd line for ``user`` (no newline)."""
    if not _USER.match(user):
        raise ValueError(f"{user!r} cannot be an htpasswd user name")
    return f"{user}:{sha512_crypt(password)}"


def check_file(text: str) -> list[str]:
    """The user names of an htpasswd file's contents; ValueError for a line nginx would
    misread or a plain-text password (the message names the line number, not its content)."""
    users = []
    for number, raw in enumerate(text.splitlines(), 1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        user, sep, hashed = raw.partition(":")
        if not sep or not _USER.match(user):
            raise ValueError(f"htpasswd line {number}: expected user:hash")
        if not _ACCEPTED.match(hashed):
            raise ValueError(f"htpasswd line {number} (user {user}): not a hash nginx checks "
                             "({SHA}, {SSHA}, $1$, $5$, $6$ or bcrypt); plain passwords are "
                             "refused")
        users.append(user)
    return users


__all__ = ["DEFAULT_ROUNDS", "check_file", "line", "sha512_crypt"]
