"""The admin password: stored only as a salted scrypt hash (hashlib, OpenSSL's scrypt), checked
in constant time. Pure.

Format of the stored text: ``scrypt$<n>$<r>$<p>$<salt base64>$<hash base64>``. The cost
(n=2^15, r=8, p=1: about 32 MiB and tens of milliseconds per check) makes guessing slow; the
dashboard also rate-limits attempts (issue 8).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

N, R, P = 1 << 15, 8, 1
_MAXMEM = 64 * 1024 * 1024


def new_password() -> str:
    """A random password to print once: 20 characters from a URL-safe alphabet (120 bits)."""
    return secrets.token_urlsafe(15)


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=N, r=R, p=P, maxmem=_MAXMEM, dklen=32)
    return "$".join(["scrypt", str(N), str(R), str(P), base64.b64encode(salt).decode(),
                     base64.b64encode(digest).decode()])


def verify_password(password: str, stored: str) -> bool:
    """True only if ``password`` has the stored hash; False for any malformed record."""
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        if kind != "scrypt":
            return False
        want = base64.b64decode(digest, validate=True)
        got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt, validate=True), n=int(n), r=int(r),
                             p=int(p), maxmem=_MAXMEM, dklen=len(want))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, want)
