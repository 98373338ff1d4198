"""API keys: ``Authorization: Bearer <key>``, scopes predict ⊂ train ⊂ admin.

With no keys configured every caller is an anonymous admin; `clserve` only allows that on a loopback address.
A key is named in logs and records by a short digest, never by itself.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from service.errors import ApiError
from service.settings import SCOPE_RANK, Settings


@dataclass(frozen=True)
class Principal:
    name: str  # "key-1a2b3c4d" (a digest of the key) or "anonymous"
    scope: str

    def allows(self, scope: str) -> bool:
        return SCOPE_RANK[self.scope] >= SCOPE_RANK[scope]


ANONYMOUS = Principal("anonymous", "admin")


def key_name(key: str) -> str:
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:8]


def authenticate(settings: Settings, authorization: str | None) -> Principal:
    """The caller behind an Authorization header (401 when missing or unknown)."""
    if not settings.api_keys:
        return ANONYMOUS
    challenge = {"WWW-Authenticate": "Bearer"}
    if not authorization:
        raise ApiError(401, "an API key is required: send 'Authorization: Bearer <key>'", headers=challenge)
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "the Authorization header must be 'Bearer <key>'", headers=challenge)
    token = token.strip()
    found = None
    for key, scope in settings.api_keys.items():  # compare with every key, in constant time each
        if hmac.compare_digest(key.encode(), token.encode()):
            found = Principal(key_name(key), scope)
    if found is None:
        raise ApiError(401, "unknown API key", headers=challenge)
    return found


def authorize(principal: Principal, scope: str) -> Principal:
    if not principal.allows(scope):
        raise ApiError(403, f"this key has the {principal.scope!r} scope; this needs {scope!r}")
    return principal
