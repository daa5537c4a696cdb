"""The protobuf messages psrpc and LiveKit's ingress RPCs put on the bus, built without protoc.

Two files are described here field by field and added to protobuf's default pool:

* ``internal`` (psrpc's internal/internal.proto): the request/response/claim messages
  every psrpc call exchanges. ``Stream*`` are left out (no streaming RPC is used).
* ``rpc`` (livekit/protocol's protobufs/rpc/ingress.proto and rpc/io.proto): the request
  and response types of the ingress services, the ones this project needs.

Names and field numbers are the Go sources' (the wire is all that matters); the
``livekit.*`` field types are the installed livekit-protocol's own descriptors, which live
in the same default pool, so ``StartIngressRequest().info`` *is* a
``livekit.protocol.ingress.IngressInfo``. The default pool is shared by the process: a
second definition of these full names (e.g. a generated ``rpc`` package) would conflict,
which is why the file names are ours (``relay_psrpc/...``) and nothing else defines them.
"""

from __future__ import annotations

from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool, empty_pb2, message_factory
from google.protobuf.message import Message
from livekit.protocol import ingress as lk_ingress

__all__ = [
    "ChannelMsg",
    "ClaimRequest",
    "ClaimResponse",
    "CreateIngressResponse",
    "DeleteWHIPResourceRequest",
    "GetIngressInfoRequest",
    "GetIngressInfoResponse",
    "ICERestartWHIPResourceRequest",
    "ICERestartWHIPResourceResponse",
    "IngressSession",
    "KillIngressSessionRequest",
    "ListActiveIngressRequest",
    "ListActiveIngressResponse",
    "Msg",
    "Request",
    "Response",
    "StartIngressRequest",
    "UpdateIngressStateRequest",
    "WHIPRTCConnectionNotifyRequest",
]

_F = descriptor_pb2.FieldDescriptorProto
_STRING, _BYTES, _BOOL = _F.TYPE_STRING, _F.TYPE_BYTES, _F.TYPE_BOOL
_INT64, _FLOAT, _MESSAGE = _F.TYPE_INT64, _F.TYPE_FLOAT, _F.TYPE_MESSAGE
_REPEATED = "repeated"
_MAP = "map"

# (name, number, type, type_name or "", "repeated" / "map" / "")
Field = tuple[str, int, int, str, str]


def _camel(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in name.split("_"))


def _message(name: str, fields: list[Field]) -> descriptor_pb2.DescriptorProto:
    """One message type; a "map" field gets the nested ``XxxEntry`` protoc would make
    (only map<string, string> occurs here)."""
    msg = descriptor_pb2.DescriptorProto(name=name)
    for fname, number, ftype, type_name, kind in fields:
        camel = _camel(fname)
        field = msg.field.add(name=fname, number=number, type=ftype,
                              label=_F.LABEL_OPTIONAL, json_name=camel[:1].lower() + camel[1:])
        if kind == _MAP:
            entry = msg.nested_type.add(name=_camel(fname) + "Entry")
            entry.options.map_entry = True
            entry.field.add(name="key", number=1, type=_STRING, label=_F.LABEL_OPTIONAL,
                            json_name="key")
            entry.field.add(name="value", number=2, type=_STRING, label=_F.LABEL_OPTIONAL,
                            json_name="value")
            field.type = _MESSAGE
            field.type_name = f".{{package}}.{name}.{entry.name}"
            field.label = _F.LABEL_REPEATED
        elif kind == _REPEATED:
            field.label = _F.LABEL_REPEATED
        if type_name:
            field.type_name = type_name
    return msg


def _file(name: str, package: str, deps: list[str],
          messages: list[tuple[str, list[Field]]]) -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto(name=name, package=package, syntax="proto3",
                                               dependency=deps)
    for msg_name, fields in messages:
        msg = _message(msg_name, fields)
        for field in msg.field:
            if field.type_name:
                field.type_name = field.type_name.replace("{package}", package)
        proto.message_type.append(msg)
    return proto


_ANY = ".google.protobuf.Any"

# github.com/livekit/psrpc internal/internal.proto (package internal)
INTERNAL_FILE = _file("relay_psrpc/internal.proto", "internal", [any_pb2.DESCRIPTOR.name], [
    ("Msg", [("type_url", 1, _STRING, "", ""), ("value", 2, _BYTES, "", ""),
             ("channel", 3, _STRING, "", "")]),
    ("Channel", [("channel", 3, _STRING, "", "")]),
    ("Request", [("request_id", 1, _STRING, "", ""), ("client_id", 2, _STRING, "", ""),
                 ("sent_at", 3, _INT64, "", ""), ("expiry", 4, _INT64, "", ""),
                 ("multi", 5, _BOOL, "", ""), ("request", 6, _MESSAGE, _ANY, ""),
                 ("metadata", 7, _STRING, "", _MAP), ("raw_request", 8, _BYTES, "", "")]),
    ("Response", [("request_id", 1, _STRING, "", ""), ("server_id", 2, _STRING, "", ""),
                  ("sent_at", 3, _INT64, "", ""), ("response", 4, _MESSAGE, _ANY, ""),
                  ("error", 5, _STRING, "", ""), ("code", 6, _STRING, "", ""),
                  ("raw_response", 7, _BYTES, "", ""),
                  ("error_details", 8, _MESSAGE, _ANY, _REPEATED)]),
    ("ClaimRequest", [("request_id", 1, _STRING, "", ""), ("server_id", 2, _STRING, "", ""),
                      ("affinity", 3, _FLOAT, "", "")]),
    ("ClaimResponse", [("request_id", 1, _STRING, "", ""), ("server_id", 2, _STRING, "", "")]),
])

_INFO, _STATE = ".livekit.IngressInfo", ".livekit.IngressState"
_VIDEO, _AUDIO = ".livekit.InputVideoState", ".livekit.InputAudioState"

# github.com/livekit/protocol protobufs/rpc/ingress.proto + rpc/io.proto (package rpc):
# the ingress messages only (egress and SIP ones are not needed here)
RPC_FILE = _file("relay_psrpc/rpc_ingress.proto", "rpc", [lk_ingress.DESCRIPTOR.name], [
    # rpc/ingress.proto
    ("ListActiveIngressRequest", []),
    ("ListActiveIngressResponse", [("ingress_ids", 1, _STRING, "", _REPEATED),
                                   ("ingress_sessions", 2, _MESSAGE, ".rpc.IngressSession",
                                    _REPEATED)]),
    ("DeleteWHIPResourceRequest", [("resource_id", 1, _STRING, "", ""),
                                   ("stream_key", 2, _STRING, "", "")]),
    ("ICERestartWHIPResourceRequest", [("resource_id", 1, _STRING, "", ""),
                                       ("stream_key", 2, _STRING, "", ""),
                                       ("user_fragment", 3, _STRING, "", ""),
                                       ("password", 4, _STRING, "", ""),
                                       ("candidates", 5, _STRING, "", _REPEATED),
                                       ("raw_trickle_ice_sdpfrag", 6, _STRING, "", ""),
                                       ("if_match", 7, _STRING, "", "")]),
    ("ICERestartWHIPResourceResponse", [("trickle_ice_sdpfrag", 1, _STRING, "", ""),
                                        ("etag", 2, _STRING, "", "")]),
    ("WHIPRTCConnectionNotifyRequest", [("participant_id", 1, _STRING, "", ""),
                                        ("closed", 2, _BOOL, "", ""),
                                        ("video", 3, _MESSAGE, _VIDEO, ""),
                                        ("audio", 4, _MESSAGE, _AUDIO, "")]),
    ("StartIngressRequest", [("info", 1, _MESSAGE, _INFO, ""), ("token", 2, _STRING, "", ""),
                             ("ws_url", 3, _STRING, "", ""),
                             ("logging_fields", 4, _STRING, "", _MAP),
                             ("feature_flags", 5, _STRING, "", _MAP)]),
    ("IngressSession", [("ingress_id", 1, _STRING, "", ""), ("resource_id", 2, _STRING, "", "")]),
    ("KillIngressSessionRequest", [("session", 1, _MESSAGE, ".rpc.IngressSession", "")]),
    # rpc/io.proto
    ("CreateIngressResponse", [("info", 1, _MESSAGE, _INFO, "")]),
    ("GetIngressInfoRequest", [("ingress_id", 1, _STRING, "", ""),
                               ("stream_key", 2, _STRING, "", "")]),
    ("GetIngressInfoResponse", [("info", 1, _MESSAGE, _INFO, ""), ("token", 2, _STRING, "", ""),
                                ("ws_url", 3, _STRING, "", ""),
                                ("project_id", 6, _STRING, "", ""),
                                ("logging_fields", 4, _STRING, "", _MAP),
                                ("feature_flags", 5, _STRING, "", _MAP)]),
    ("UpdateIngressStateRequest", [("ingress_id", 1, _STRING, "", ""),
                                   ("state", 2, _MESSAGE, _STATE, "")]),
])


def _register(proto: descriptor_pb2.FileDescriptorProto) -> dict[str, type[Message]]:
    """Add the file to the default pool (once: a re-import finds it there) and make
    its classes."""
    pool = descriptor_pool.Default()
    try:
        file = pool.FindFileByName(proto.name)
    except KeyError:
        pool.Add(proto)
        file = pool.FindFileByName(proto.name)
    return {name: message_factory.GetMessageClass(desc)
            for name, desc in file.message_types_by_name.items()}


_ = empty_pb2  # google.protobuf.Empty, the answer of several RPCs, is registered with it
_internal = _register(INTERNAL_FILE)
_rpc = _register(RPC_FILE)

Msg = _internal["Msg"]
ChannelMsg = _internal["Channel"]
Request = _internal["Request"]
Response = _internal["Response"]
ClaimRequest = _internal["ClaimRequest"]
ClaimResponse = _internal["ClaimResponse"]

ListActiveIngressRequest = _rpc["ListActiveIngressRequest"]
ListActiveIngressResponse = _rpc["ListActiveIngressResponse"]
DeleteWHIPResourceRequest = _rpc["DeleteWHIPResourceRequest"]
ICERestartWHIPResourceRequest = _rpc["ICERestartWHIPResourceRequest"]
ICERestartWHIPResourceResponse = _rpc["ICERestartWHIPResourceResponse"]
WHIPRTCConnectionNotifyRequest = _rpc["WHIPRTCConnectionNotifyRequest"]
StartIngressRequest = _rpc["StartIngressRequest"]
IngressSession = _rpc["IngressSession"]
KillIngressSessionRequest = _rpc["KillIngressSessionRequest"]
CreateIngressResponse = _rpc["CreateIngressResponse"]
GetIngressInfoRequest = _rpc["GetIngressInfoRequest"]
GetIngressInfoResponse = _rpc["GetIngressInfoResponse"]
UpdateIngressStateRequest = _rpc["UpdateIngressStateRequest"]
