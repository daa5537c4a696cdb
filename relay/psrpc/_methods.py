"""The RPC methods: their flags, as the generated ``rpc/*.psrpc.go`` register them.

``sd.RegisterMethod(name, affinityEnabled, multi, requireClaim, queue)`` in
livekit/protocol rpc/ingress.psrpc.go and rpc/io.psrpc.go; only the ingress methods are
listed. A method's flags decide its channels' use and the client's selection rule.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf import empty_pb2
from google.protobuf.message import Message
from livekit.protocol import ingress as lk

from . import _proto as pb

__all__ = [
    "CREATE_INGRESS",
    "DELETE_INGRESS",
    "DELETE_WHIP_RESOURCE",
    "GET_INGRESS_INFO",
    "ICE_RESTART_WHIP_RESOURCE",
    "LIST_ACTIVE_INGRESS",
    "START_INGRESS",
    "UPDATE_INGRESS",
    "UPDATE_INGRESS_STATE",
    "WHIP_RTC_CONNECTION_NOTIFY",
    "Method",
]


@dataclass(frozen=True)
class Method:
    """One psrpc method of a service, with psrpc's four flags.

    * ``affinity``: the client collects claims and picks the highest affinity
      (else it takes the first claim);
    * ``multi``: every server answers, the client collects responses until its timeout;
    * ``claim``: a server must claim the request and be picked before it handles it;
    * ``queue``: servers subscribe as a queue (one of them gets each message, by SET NX).
    """

    service: str
    name: str
    request_type: type[Message]
    response_type: type[Message]
    affinity: bool = False
    multi: bool = False
    claim: bool = False
    queue: bool = False


_EMPTY = empty_pb2.Empty

# rpc/ingress.psrpc.go: IngressInternal (the server calls, a worker serves)
START_INGRESS = Method("IngressInternal", "StartIngress", pb.StartIngressRequest, lk.IngressInfo,
                       affinity=True, claim=True)
LIST_ACTIVE_INGRESS = Method("IngressInternal", "ListActiveIngress", pb.ListActiveIngressRequest,
                             pb.ListActiveIngressResponse, multi=True)
# rpc/ingress.psrpc.go: IngressHandler (topic: the ingress id, or the WHIP resource id)
UPDATE_INGRESS = Method("IngressHandler", "UpdateIngress", lk.UpdateIngressRequest,
                        lk.IngressState, claim=True, queue=True)
DELETE_INGRESS = Method("IngressHandler", "DeleteIngress", lk.DeleteIngressRequest,
                        lk.IngressState, claim=True, queue=True)
DELETE_WHIP_RESOURCE = Method("IngressHandler", "DeleteWHIPResource",
                              pb.DeleteWHIPResourceRequest, _EMPTY, claim=True, queue=True)
ICE_RESTART_WHIP_RESOURCE = Method("IngressHandler", "ICERestartWHIPResource",
                                   pb.ICERestartWHIPResourceRequest,
                                   pb.ICERestartWHIPResourceResponse, claim=True, queue=True)
WHIP_RTC_CONNECTION_NOTIFY = Method("IngressHandler", "WHIPRTCConnectionNotify",
                                    pb.WHIPRTCConnectionNotifyRequest, _EMPTY, queue=True)
# rpc/io.psrpc.go: IOInfo (a worker calls, the server serves)
CREATE_INGRESS = Method("IOInfo", "CreateIngress", lk.IngressInfo, pb.CreateIngressResponse,
                        claim=True, queue=True)
GET_INGRESS_INFO = Method("IOInfo", "GetIngressInfo", pb.GetIngressInfoRequest,
                          pb.GetIngressInfoResponse, claim=True, queue=True)
UPDATE_INGRESS_STATE = Method("IOInfo", "UpdateIngressState", pb.UpdateIngressStateRequest,
                              _EMPTY, claim=True, queue=True)
