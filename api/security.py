"""Passwords (argon2), access tokens for people (JWT) and long random tokens for machines.

Machine tokens carry a fixed prefix so a bearer value is told apart from a JWT without trying
to decode it; only their SHA-256 is stored.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from config.settings import ApiSettings
from db.base import utcnow
from db.review import Role

log = logging.getLogger(__name__)

JWT_ALGORITHM = "HS256"
#: Machine tokens start with this, then 43 URL-safe characters (256 random bits).
MACHINE_TOKEN_PREFIX = "fgw_"  # noqa: S105 - a public prefix, not a secret
#: How many characters of a machine token are kept in clear to tell tokens apart in listings.
SHOWN_PREFIX_LENGTH = 12
_AUDIENCE = "fracture-gateway-api"

_hasher = PasswordHasher()


@cache
def _dummy_hash() -> str:
    """Verified against when the user does not exist, so both paths take the same time."""
    return _hasher.hash(secrets.token_urlsafe(16))


class InvalidCredentials(ValueError):  # noqa: N818 - the name says what was wrong
    """A password, access token or machine token that does not authenticate anyone."""


def hash_password(password: str) -> str:
    """An argon2id hash of ``password``."""
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """Whether ``password`` matches ``password_hash``; with no hash, spend the same time."""
    try:
        return (
            _hasher.verify(password_hash or _dummy_hash(), password) and password_hash is not None
        )
    except (VerificationError, InvalidHashError):
        return False


def signing_key(settings: ApiSettings) -> str:
    """The JWT key: the configured secret, or in development a random per-process key.

    Production settings refuse a missing secret (``config.settings``); the random key means
    tokens do not survive a restart, which the warning says.
    """
    if settings.secret_key is not None:
        return settings.secret_key.get_secret_value()
    if settings.environment == "production":
        raise ValueError("api.secret_key must be set in production")
    log.warning(
        "api.secret_key is not set: using a random key for this process; "
        "access tokens will not survive a restart (set FRACTURE_GATEWAY_API__SECRET_KEY)"
    )
    return secrets.token_urlsafe(32)


@dataclass(frozen=True, slots=True)
class AccessToken:
    """An issued access token and when it expires."""

    token: str
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class TokenClaims:
    """What a valid access token says."""

    user_id: int
    role: Role


def issue_access_token(
    key: str, user_id: int, role: Role, *, minutes: int, now: datetime | None = None
) -> AccessToken:
    """A signed JWT for ``user_id`` valid for ``minutes``."""
    now = now or utcnow()
    expires = now + timedelta(minutes=minutes)
    claims = {
        "sub": str(user_id),
        "role": role.value,
        "iat": int(now.timestamp()),
        "exp": int(expires.timestamp()),
        "aud": _AUDIENCE,
        "jti": secrets.token_hex(8),
    }
    return AccessToken(jwt.encode(claims, key, algorithm=JWT_ALGORITHM), expires)


def decode_access_token(key: str, token: str) -> TokenClaims:
    """Check signature, expiry and audience; raise :class:`InvalidCredentials` otherwise."""
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=[JWT_ALGORITHM],
            audience=_AUDIENCE,
            options={"require": ["exp", "sub", "aud"]},
        )
        return TokenClaims(int(claims["sub"]), Role(claims["role"]))
    except (jwt.InvalidTokenError, KeyError, ValueError, TypeError) as exc:
        raise InvalidCredentials("invalid or expired access token") from exc


def new_machine_token() -> str:
    """A fresh machine token (shown once, never stored in clear)."""
    return MACHINE_TOKEN_PREFIX + secrets.token_urlsafe(32)


def is_machine_token(value: str) -> bool:
    return value.startswith(MACHINE_TOKEN_PREFIX)


def machine_token_digest(token: str) -> str:
    """The stored form of a machine token: hex SHA-256 (the token has 256 random bits)."""
    return hashlib.sha256(token.encode()).hexdigest()
