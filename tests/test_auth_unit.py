"""Authenticator: the verified-token cache never outlives a token's validity."""

from __future__ import annotations

import time

import pytest
from livekit.api import AccessToken, VideoGrants

from api.auth import Authenticator, require_ingress_admin
from api.errors import TwirpError

KEY, SECRET = "APIkey", "s" * 32


def token(ttl: int = 10) -> str:
    from datetime import timedelta

    return (AccessToken(KEY, SECRET).with_grants(VideoGrants(ingress_admin=True))
            .with_ttl(timedelta(seconds=ttl)).to_jwt())


def test_cached_token_is_reverified_after_its_window() -> None:
    now = [time.time()]
    auth = Authenticator({KEY: SECRET}, clock=lambda: now[0])
    verifier = auth._verifiers[KEY]
    calls = []
    real_verify = verifier.verify
    verifier.verify = lambda t: calls.append(t) or real_verify(t)  # type: ignore[method-assign]
    tok = "Bearer " + token(ttl=10)
    for _ in range(3):
        require_ingress_admin(auth.authenticate(tok, None))
    assert len(calls) == 1  # verified once, then served from the cache
    now[0] += 10 + 61  # past exp plus the minute of leeway
    require_ingress_admin(auth.authenticate(tok, None))
    assert len(calls) == 2  # the cache let go; the token was checked again


def test_bad_tokens_are_never_cached() -> None:
    auth = Authenticator({KEY: SECRET})
    bad = "Bearer " + token()[:-2] + "xx"
    for _ in range(2):
        with pytest.raises(TwirpError, match="invalid authorization token"):
            auth.authenticate(bad, None)
    assert not auth._verified


def test_cache_is_bounded() -> None:
    auth = Authenticator({KEY: SECRET})
    auth.CACHE_ENTRIES = 5
    for ttl in range(10, 30):
        auth.authenticate("Bearer " + token(ttl), None)
    assert len(auth._verified) == 5
