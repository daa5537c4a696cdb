"""Sans-IO core of psrpc, the RPC protocol LiveKit speaks over Redis pub/sub.

Bytes in, typed events out, no sockets, no clocks (``now`` is passed in, unix ns, as
psrpc's expiries are wall-clock), bounded state. A transport (the Redis edge) subscribes
as told, feeds each message with ``receive(channel, payload, now)``, calls ``tick(now)``
by ``next_deadline()`` and performs the :class:`Publish` / :class:`Subscribe` /
:class:`Unsubscribe` actions returned, in order::

    client = psrpc.RpcClient("IOInfo", psrpc.new_id("CLI_"))
    subscribe(client.subscriptions())
    rid, actions = client.request(psrpc.GET_INGRESS_INFO,
                                  psrpc.GetIngressInfoRequest(stream_key=key), now())
    ...  # perform actions; on a message: client.receive(channel, payload, now())
    # until a psrpc.Result(rid, response, error) comes out

    server = psrpc.RpcServer("IngressInternal", psrpc.new_id("SRV_"))
    subscribe(server.register(psrpc.START_INGRESS))  # AffinityWanted -> server.claim()
                                                     # HandleRequest -> server.respond()

Errors: anything from Redis that is not a psrpc envelope of the channel's type (bad
protobuf, wrong ``type_url``, over :data:`MAX_PAYLOAD`) raises :class:`PsrpcProtocolError`
(a ``ValueError``) from ``receive``, and nothing else is raised for bus input; the object
stays usable. A request body that does not parse is answered ``malformed_request`` (as
psrpc's server does); a response body that does not parse becomes a ``malformed_result``
error. Misuse by the program (wrong method type, responding to a request not handed
out) raises ``ValueError``/``TypeError``/``RuntimeError``. Call outcomes carry psrpc's
error codes as strings (:class:`RpcError`: ``unavailable``, ``deadline_exceeded``,
``not_found``...).

Wire facts, verified in livekit/psrpc (220fe5f, 2026-07: v0.7.2 plus one client-side
expiry clamp; livekit-server 1.13.5's go.mod pins v0.7.3), livekit/protocol (d74e7cd,
2026-08), livekit/ingress (19017c8) and livekit/livekit (788d4c3, version 1.13.5):

* Messages (psrpc internal/internal.proto, package ``internal``): ``Msg``, ``Channel``,
  ``Request``, ``Response``, ``ClaimRequest``, ``ClaimResponse`` with their names and
  field numbers, built in ``_proto.py`` as FileDescriptorProtos in protobuf's default
  pool; the ingress RPC messages likewise (protocol protobufs/rpc/ingress.proto and
  rpc/io.proto, package ``rpc``), their ``livekit.*`` fields being livekit-protocol's own
  classes.
* Envelope (internal/bus/serialization.go): ``Msg{type_url:
  "type.googleapis.com/<full name>", value}``, ``channel`` empty on Redis
  (internal/bus/bus_redis.go ``Publish``), i.e. a ``google.protobuf.Any``; readers look
  the type up by the name after the last ``/``.
* Channels (pkg/info/channels.go, the ``Legacy`` names the Redis bus uses):
  ``Service|Method|Topic|REQ`` and ``|RCLAIM`` (no topic: ``Service|Method|REQ``),
  ``Service|<clientID>|CLAIM`` and ``|RES``; segments keep ``[0-9A-Za-z_]`` and escape any
  other code point as ``u+hhhh`` (``U+hhhhhhhh`` above U+FFFF); empty segments vanish.
* Ids (pkg/rand/id.go): ``CLI_``/``SRV_``/``REQ_`` + 12 of ``[a-zA-Z0-9]``; one client
  id and one server id per generated service client/server.
* Queue subscriptions (internal/bus/bus_redis.go ``read``): a subscriber handles a
  message only after ``SET <base64(sha256(payload))> <rand> NX`` with a 5 s expiry
  succeeds: :func:`queue_lock_key`, :data:`QUEUE_LOCK_TTL_NS`.
* Method flags (protocol rpc/ingress.psrpc.go, rpc/io.psrpc.go ``RegisterMethod(name,
  affinity, multi, claim, queue)``): ``IngressInternal.StartIngress`` affinity + claim;
  ``ListActiveIngress`` multi, on topic "" for livekit/ingress (cmd/server/main.go), i.e.
  ``IngressInternal|ListActiveIngress|REQ``; ``IngressHandler.*`` claim + queue
  (``WHIPRTCConnectionNotify`` queue only) on the ingress id or WHIP resource id topic
  (ingress pkg/utils/rpc.go); ``IOInfo.*`` claim + queue, no topic.
* Server (pkg/server/rpc.go): drop a request at/after ``expiry``; unparsable
  ``raw_request`` -> ``malformed_request`` response; claim with affinity 1, or the
  affinity function's (livekit/ingress's ``StartIngressAffinity``: 1, or -1 to decline);
  handle only when the ClaimResponse names us; Response on the client's RES channel, an
  error being a non-empty ``error`` plus ``code``.
* Client (pkg/client/rpc.go ``selectServer``, options.go, client.go, errors.go): see
  ``_client.py``; timeouts 3 s, selection 1 s, short circuit 200 ms; "no response from
  servers" is ``ErrNoResponse`` (``unavailable``), what livekit-server 1.13.5 answered a
  URL CreateIngress with no worker. livekit-server's clients retry ``unavailable`` and
  ``deadline_exceeded`` (protocol rpc/typed_api.go ``DefaultPSRPCConfig``: 3 attempts,
  timeouts 3/5/7 s; psrpc pkg/middleware/retry.go); its StartIngress sends ``info`` only
  (livekit pkg/service/ingress.go), and its GetIngressInfo answers ``info`` only
  (pkg/service/ioservice_ingress.go): no token, no ws_url.

Left out: psrpc streams (``Stream*`` messages, ``|STR`` channels), the NATS/local buses'
``Server``/``Local`` channel names, psrpc's optional selection settings and retry
middleware (callers retry), interceptors, hooks and metrics; the Redis transport itself.
"""

from __future__ import annotations

from ._channels import (
    ID_ALPHABET,
    QUEUE_LOCK_TTL_NS,
    claim_request_channel,
    claim_response_channel,
    new_id,
    queue_lock_key,
    request_channel,
    response_channel,
    sanitize,
)
from ._client import (
    AFFINITY_SHORT_CIRCUIT_NS,
    CLIENT_TIMEOUT_NS,
    MAX_REQUESTS,
    SELECTION_TIMEOUT_NS,
    ClientEvent,
    RpcClient,
)
from ._envelope import (
    MAX_PAYLOAD,
    TYPE_URL_PREFIX,
    PsrpcProtocolError,
    decode,
    decode_payload,
    encode,
)
from ._events import (
    AffinityWanted,
    Call,
    CallTimedOut,
    HandleRequest,
    MultiDone,
    MultiReply,
    Publish,
    Result,
    RpcError,
    Subscribe,
    Unsubscribe,
)
from ._methods import (
    CREATE_INGRESS,
    DELETE_INGRESS,
    DELETE_WHIP_RESOURCE,
    GET_INGRESS_INFO,
    ICE_RESTART_WHIP_RESOURCE,
    LIST_ACTIVE_INGRESS,
    START_INGRESS,
    UPDATE_INGRESS,
    UPDATE_INGRESS_STATE,
    WHIP_RTC_CONNECTION_NOTIFY,
    Method,
)
from ._proto import (
    ChannelMsg,
    ClaimRequest,
    ClaimResponse,
    CreateIngressResponse,
    DeleteWHIPResourceRequest,
    GetIngressInfoRequest,
    GetIngressInfoResponse,
    ICERestartWHIPResourceRequest,
    ICERestartWHIPResourceResponse,
    IngressSession,
    KillIngressSessionRequest,
    ListActiveIngressRequest,
    ListActiveIngressResponse,
    Msg,
    Request,
    Response,
    StartIngressRequest,
    UpdateIngressStateRequest,
    WHIPRTCConnectionNotifyRequest,
)
from ._server import MAX_CALLS, RpcServer, ServerEvent

__all__ = [
    "AFFINITY_SHORT_CIRCUIT_NS",
    "CLIENT_TIMEOUT_NS",
    "CREATE_INGRESS",
    "DELETE_INGRESS",
    "DELETE_WHIP_RESOURCE",
    "GET_INGRESS_INFO",
    "ICE_RESTART_WHIP_RESOURCE",
    "ID_ALPHABET",
    "LIST_ACTIVE_INGRESS",
    "MAX_CALLS",
    "MAX_PAYLOAD",
    "MAX_REQUESTS",
    "QUEUE_LOCK_TTL_NS",
    "SELECTION_TIMEOUT_NS",
    "START_INGRESS",
    "TYPE_URL_PREFIX",
    "UPDATE_INGRESS",
    "UPDATE_INGRESS_STATE",
    "WHIP_RTC_CONNECTION_NOTIFY",
    "AffinityWanted",
    "Call",
    "CallTimedOut",
    "ChannelMsg",
    "ClaimRequest",
    "ClaimResponse",
    "ClientEvent",
    "CreateIngressResponse",
    "DeleteWHIPResourceRequest",
    "GetIngressInfoRequest",
    "GetIngressInfoResponse",
    "HandleRequest",
    "ICERestartWHIPResourceRequest",
    "ICERestartWHIPResourceResponse",
    "IngressSession",
    "KillIngressSessionRequest",
    "ListActiveIngressRequest",
    "ListActiveIngressResponse",
    "Method",
    "Msg",
    "MultiDone",
    "MultiReply",
    "PsrpcProtocolError",
    "Publish",
    "Request",
    "Response",
    "Result",
    "RpcClient",
    "RpcError",
    "RpcServer",
    "ServerEvent",
    "StartIngressRequest",
    "Subscribe",
    "Unsubscribe",
    "UpdateIngressStateRequest",
    "WHIPRTCConnectionNotifyRequest",
    "claim_request_channel",
    "claim_response_channel",
    "decode",
    "decode_payload",
    "encode",
    "new_id",
    "queue_lock_key",
    "request_channel",
    "response_channel",
    "sanitize",
]
