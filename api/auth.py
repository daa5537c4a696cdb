"""Request authentication exactly as LiveKit's servers do it.

An HS256 JWT whose `iss` names an API key we hold, signed with that key's secret,
with `exp`/`nbf` checked at one minute of leeway. The four Ingress methods need the
grant `video.ingressAdmin`. Every refusal is Twirp `unauthenticated` with the texts
LiveKit's clients already know, so scripts that match on them keep working.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping

import jwt
from livekit.api import TokenVerifier
from livekit.api.access_token import Claims

from .errors import TwirpError

LEEWAY = datetime.timedelta(minutes=1)

BAD_HEADER = "invalid authorization header. Must start with Bearer "
BAD_TOKEN = "invalid authorization token"
BAD_KEY = "invalid API key"
NO_PERMISSION = "permissions denied"


class Authenticator:
    """Turns the request's credentials into verified claims (or a refusal)."""

    def __init__(self, keys: Mapping[str, str]) -> None:
        self._verifiers = {
            key: TokenVerifier(key, secret, leeway=LEEWAY) for key, secret in keys.items()
        }

    def authenticate(self, authorization: str | None, access_token: str | None) -> Claims | None:
        """Claims of a valid token; None when the request carries no token at all.

        A request without credentials is not refused here: LiveKit refuses it at the
        permission check, with "permissions denied".
        """
        if authorization:
            if not authorization.startswith("Bearer "):
                raise TwirpError("unauthenticated", BAD_HEADER)
            token = authorization[len("Bearer ") :]
        elif access_token:
            token = access_token
        else:
            return None
        try:
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise TwirpError("unauthenticated", BAD_TOKEN) from None
        verifier = self._verifiers.get(str(unverified.get("iss", "")))
        if verifier is None:
            raise TwirpError("unauthenticated", BAD_KEY)
        try:
            return verifier.verify(token)
        except (jwt.PyJWTError, TypeError, ValueError):
            raise TwirpError("unauthenticated", BAD_TOKEN) from None


def require_ingress_admin(claims: Claims | None) -> None:
    if claims is None or not claims.video.ingress_admin:
        raise TwirpError("unauthenticated", NO_PERMISSION)
