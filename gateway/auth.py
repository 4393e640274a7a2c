"""Who is connecting: Fechatter's EdDSA access tokens, verified with PyJWT.

Three ways to present a token, in this order of precedence (README "Tokens"):

1. ``Authorization: Bearer`` — clients that can set headers;
2. the :data:`COOKIE_NAME` cookie — set by ``POST /session`` (gateway/session.py), sent by an
   ``EventSource(url, {withCredentials: true})``: the token stays out of URLs (RFC 9700);
3. ``?access_token=`` — what Fechatter's web client sends (EventSource cannot set headers).

Two different tokens in one request are refused (``conflicting_tokens``, RFC 6750, section 2: one
method per request) rather than silently picking one. Every failure is a 401 with a short JSON
body and a stable ``reason``, also used as the metrics label. A token is never logged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from settings import Jwt

#: The only algorithm Fechatter signs with; never read it from the token header.
ALGORITHM: Final = "EdDSA"
#: Claims a token must carry (Fechatter core's rules).
REQUIRED_CLAIMS: Final = ("exp", "iss", "aud", "sub")
#: Longer "tokens" are refused before any parsing (a real one is well under 1 KiB).
MAX_TOKEN_LENGTH: Final = 8192
#: The cookie ``POST /session`` sets (HttpOnly; Secure; SameSite=None; Path=/events).
COOKIE_NAME: Final = "fechatter_notify_token"


@dataclass(frozen=True, slots=True)
class Principal:
    """A verified caller.

    Parameters:
      user_id(int): the token's ``user.id``.
      expires_at(float): the token's ``exp``, in Unix seconds.
    """

    user_id: int
    expires_at: float


class AuthError(Exception):
    """The request carries no acceptable token; ``reason`` is a stable code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def _public_key(config: Jwt) -> Ed25519PublicKey | None:
    if not config.public_key:
        return None
    key = load_pem_public_key(config.public_key.encode())
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("gateway.jwt.public_key is not an Ed25519 public key")
    return key


class TokenVerifier:
    """Verifies access tokens against ``gateway.jwt``.

    Raises:
      ValueError: at construction, when the configured key is not an Ed25519 public key (PEM).
    """

    def __init__(self, config: Jwt) -> None:
        self.audience = config.audience
        self.issuer = config.issuer
        #: Seconds of clock skew tolerated on ``exp``/``nbf``/``iat``.
        self.leeway = config.leeway
        self._key: Ed25519PublicKey | None = _public_key(config)

    def reconfigure(self, config: Jwt) -> None:
        """Verify new tokens against ``config`` from now on (a rotated key, say); streams already
        open keep running until their own token expires.

        Raises:
          ValueError: the new key is not an Ed25519 public key; nothing was changed.
        """
        key = _public_key(config)
        self.audience, self.issuer, self.leeway, self._key = config.audience, config.issuer, config.leeway, key

    @property
    def configured(self) -> bool:
        """False when no public key is set: then every token is refused."""
        return self._key is not None

    def verify(self, token: str) -> Principal:
        """Check signature, ``aud``, ``iss``, expiry and required claims; return the caller.

        Raises:
          AuthError: with reason ``not_configured``, ``malformed``, ``expired``, ``bad_signature``,
            ``wrong_audience``, ``wrong_issuer``, ``missing_claim``, ``not_yet_valid``,
            ``wrong_algorithm``, ``invalid`` or ``no_user_id``.
        """
        if self._key is None:
            raise AuthError("not_configured", "token verification is not configured")
        if len(token) > MAX_TOKEN_LENGTH:
            raise AuthError("malformed", "token too long")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._key,
                algorithms=[ALGORITHM],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": list(REQUIRED_CLAIMS)},
            )
        except jwt.InvalidTokenError as exc:
            raise AuthError(_reason(exc), str(exc) or type(exc).__name__) from exc
        return Principal(user_id=_user_id(claims), expires_at=float(claims["exp"]))


def _reason(exc: jwt.InvalidTokenError) -> str:
    # Most specific first: InvalidSignatureError is a DecodeError subclass.
    table: tuple[tuple[type[jwt.InvalidTokenError], str], ...] = (
        (jwt.ExpiredSignatureError, "expired"),
        (jwt.InvalidSignatureError, "bad_signature"),
        (jwt.InvalidAlgorithmError, "wrong_algorithm"),
        (jwt.DecodeError, "malformed"),
        (jwt.InvalidAudienceError, "wrong_audience"),
        (jwt.InvalidIssuerError, "wrong_issuer"),
        (jwt.MissingRequiredClaimError, "missing_claim"),
        (jwt.ImmatureSignatureError, "not_yet_valid"),
    )
    for kind, reason in table:
        if isinstance(exc, kind):
            return reason
    return "invalid"


def _user_id(claims: dict[str, Any]) -> int:
    user = claims.get("user")
    raw = user.get("id") if isinstance(user, dict) else None
    # Fechatter serialises ids as JSON numbers; bool is an int subclass and never an id.
    if isinstance(raw, int) and not isinstance(raw, bool) and raw > 0:
        return raw
    if isinstance(raw, str) and raw.isdigit() and int(raw) > 0:
        return int(raw)
    raise AuthError("no_user_id", "token has no user.id")


def bearer_token(request: web.Request) -> str | None:
    """The token of an ``Authorization: Bearer`` header, if any."""
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return None


def tokens_in_request(request: web.Request) -> list[str]:
    """Every token the request carries, by precedence: ``Authorization: Bearer``, the cookie,
    ``?access_token=``."""
    candidates = (bearer_token(request), request.cookies.get(COOKIE_NAME),
                  request.query.get("access_token"))
    return [token for token in candidates if token]


def token_from_request(request: web.Request) -> str | None:
    """The request's token of highest precedence (see :func:`tokens_in_request`)."""
    found = tokens_in_request(request)
    return found[0] if found else None


def unauthorized(error: AuthError) -> web.HTTPUnauthorized:
    """The 401 to raise: short JSON, nothing else (the client does not read it anyway)."""
    body = json.dumps({"error": "unauthorized", "reason": error.reason})
    return web.HTTPUnauthorized(
        text=body,
        content_type="application/json",
        headers={"WWW-Authenticate": f'Bearer error="invalid_token", error_description="{error.reason}"'},
    )


def authenticate(request: web.Request, verifier: TokenVerifier) -> Principal:
    """Verify the request's token.

    Raises:
      AuthError: reason ``missing`` when there is no token, ``conflicting_tokens`` when two
        ways carry different ones, else as :meth:`TokenVerifier.verify`.
    """
    found = tokens_in_request(request)
    if not found:
        raise AuthError("missing", "no access token")
    if len(set(found)) > 1:
        raise AuthError("conflicting_tokens", "different tokens in one request")
    return verifier.verify(found[0])
