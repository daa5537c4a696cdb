"""Request authentication exactly as LiveKit's servers do it.

An HS256 JWT whose `iss` names an API key we hold, signed with that key's secret,
with `exp`/`nbf` checked at one minute of leeway. The four Ingress methods need the
grant `video.ingressAdmin`. Every refusal is Twirp `unauthenticated` with the texts
LiveKit's clients already know, so scripts that match on them keep working.
"""

from __future__ import annotations

import datetime
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping

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
    """Turns the request's credentials into verified claims (or a refusal).

    Verified tokens are remembered (bounded LRU) with their validity window: SDKs
    mint identical tokens for calls within the same second, and PyJWT's decoding
    costs more than the rest of a CreateIngress. A remembered token is still
    refused once it expires.
    """

    CACHE_ENTRIES = 4096

    def __init__(self, keys: Mapping[str, str], clock: Callable[[], float] = time.time) -> None:
        self._verifiers = {
            key: TokenVerifier(key, secret, leeway=LEEWAY) for key, secret in keys.items()
        }
        self._clock = clock
        self._verified: OrderedDict[str, tuple[Claims, float, float]] = OrderedDict()

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
        cached = self._verified.get(token)
        if cached is not None:
            claims, not_before, expires = cached
            if not_before <= self._clock() <= expires:
                self._verified.move_to_end(token)
                return claims
            del self._verified[token]
        try:
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise TwirpError("unauthenticated", BAD_TOKEN) from None
        verifier = self._verifiers.get(str(unverified.get("iss", "")))
        if verifier is None:
            raise TwirpError("unauthenticated", BAD_KEY)
        try:
            claims = verifier.verify(token)
        except (jwt.PyJWTError, TypeError, ValueError):
            raise TwirpError("unauthenticated", BAD_TOKEN) from None
        leeway = LEEWAY.total_seconds()
        self._verified[token] = (claims, float(unverified.get("nbf", 0)) - leeway,
                                 float(unverified["exp"]) + leeway)
        if len(self._verified) > self.CACHE_ENTRIES:
            self._verified.popitem(last=False)
        return claims


def require_ingress_admin(claims: Claims | None) -> None:
    if claims is None or not claims.video.ingress_admin:
        raise TwirpError("unauthenticated", NO_PERMISSION)
