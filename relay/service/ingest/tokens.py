"""The token an ingress participant joins its room with (REFERENCE §6)."""

from __future__ import annotations

from datetime import timedelta

from livekit import api
from livekit.protocol import ingress as pb

TOKEN_TTL = timedelta(hours=24)


def participant_token(api_key: str, api_secret: str, info: pb.IngressInfo,
                      resource_id: str) -> str:
    """Join + publish only (an ingress subscribes to nothing), kind INGRESS."""
    return (api.AccessToken(api_key, api_secret)
            .with_identity(info.participant_identity)
            .with_name(info.participant_name)
            .with_metadata(info.participant_metadata)
            .with_kind("ingress")
            .with_attributes({"ingress.ingressID": info.ingress_id,
                              "ingress.resourceID": resource_id})
            .with_grants(api.VideoGrants(room_join=True, room=info.room_name, can_publish=True,
                                         can_subscribe=False, can_publish_data=False))
            .with_ttl(TOKEN_TTL)
            .to_jwt())
