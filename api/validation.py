"""Create/update validation with LiveKit's exact error texts.

Clients and scripts match on these strings, so each one is a literal here and a
literal in the tests. The checks run in LiveKit's order, so an ingress with several
problems gets the same first complaint from both services.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from livekit.protocol import ingress as pb
from livekit.protocol import models

from .errors import TwirpError, invalid_argument

URL_SCHEMES = ("http", "https", "srt")

_VIDEO_SOURCES = {models.TrackSource.UNKNOWN, models.TrackSource.CAMERA,
                  models.TrackSource.SCREEN_SHARE}
_AUDIO_SOURCES = {models.TrackSource.UNKNOWN, models.TrackSource.MICROPHONE,
                  models.TrackSource.SCREEN_SHARE_AUDIO}
_VIDEO_CODECS = {models.VideoCodec.DEFAULT_VC, models.VideoCodec.H264_BASELINE,
                 models.VideoCodec.VP8}
_AUDIO_CODECS = {models.AudioCodec.DEFAULT_AC, models.AudioCodec.OPUS}


def _ingress(msg: str) -> TwirpError:
    return invalid_argument("invalid ingress: " + msg)


def _video(msg: str) -> TwirpError:
    return invalid_argument("invalid video parameters: " + msg)


def _audio(msg: str) -> TwirpError:
    return invalid_argument("invalid audio parameters: " + msg)


def _bypass(msg: str) -> TwirpError:
    return invalid_argument("invalid transcoding bypass configuration: " + msg)


def transcoding_enabled(info: pb.IngressInfo) -> bool:
    """Whether a session of this ingress transcodes (WHIP defaults to passthrough)."""
    if info.HasField("enable_transcoding"):
        return info.enable_transcoding
    if info.bypass_transcoding:
        return False
    return info.input_type != pb.IngressInput.WHIP_INPUT


def validate_create(req: pb.CreateIngressRequest) -> None:
    """The checks that only make sense on the request itself, then the shared ones."""
    if req.input_type not in pb.IngressInput.values():
        raise invalid_argument("invalid ingress type")
    if req.input_type == pb.IngressInput.URL_INPUT:
        if not req.url:
            raise _ingress("missing URL parameter")
        try:
            parts = urlsplit(req.url)
            parts.port  # noqa: B018 - raises on a port that is not a number 0-65535
        except ValueError as exc:
            raise _ingress(f"invalid url: {_one_line(str(exc))}") from None
        scheme = parts.scheme.lower()
        if scheme not in URL_SCHEMES:
            raise _ingress(f"invalid url scheme {scheme}")
        if not req.room_name:
            raise _ingress("no room name")


def _one_line(text: str, limit: int = 200) -> str:
    """urllib's reason, which may quote the URL: control characters escaped, bounded
    (found by fuzz/fuzz_url.py: a port of 500 NUL bytes came back in the message)."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= limit else text[:limit] + "..."


def validate_info(info: pb.IngressInfo, *, rtmp_passthrough: bool = False) -> None:
    """Consistency of a whole IngressInfo, as stored after a create or an update.

    `rtmp_passthrough` (a node setting beyond the reference) lets an RTMP ingress
    have enable_transcoding=false; without it the rules are exactly LiveKit's.
    """
    if info.input_type == pb.IngressInput.URL_INPUT and info.HasField("enabled") and (
        not info.enabled
    ):
        raise _ingress("disabled non reusable ingress")
    if not info.participant_identity:
        raise _ingress("no participant identity")
    _validate_transcoding(info, rtmp_passthrough)
    if info.HasField("video"):
        _validate_video(info.video)
    if info.HasField("audio"):
        _validate_audio(info.audio)


def _has_encoding(options: pb.IngressVideoOptions | pb.IngressAudioOptions, present: bool) -> bool:
    return present and options.WhichOneof("encoding_options") is not None


def _validate_transcoding(info: pb.IngressInfo, rtmp_passthrough: bool) -> None:
    video_set = _has_encoding(info.video, info.HasField("video"))
    audio_set = _has_encoding(info.audio, info.HasField("audio"))
    is_whip = info.input_type == pb.IngressInput.WHIP_INPUT
    if rtmp_passthrough and info.input_type == pb.IngressInput.RTMP_INPUT and (
            info.HasField("enable_transcoding") and not info.enable_transcoding):
        if video_set:
            raise _bypass("video encoding options must be empty if transcoding is disabled")
        return  # audio is transcoded anyway (the SDK takes PCM only): its options apply
    if info.bypass_transcoding:
        if not is_whip:
            raise _bypass("bypassing transcoding impossible with selected input type")
        if video_set:
            raise _bypass("video encoding options must be empty if transcoding bypass is selected")
        if audio_set:
            raise _bypass("audio encoding options must be empty if transcoding bypass is selected")
    explicit = info.enable_transcoding if info.HasField("enable_transcoding") else None
    if not is_whip and explicit is False:
        raise _bypass("bypassing transcoding impossible with selected input type")
    enabled = bool(explicit) if is_whip else True
    if not enabled:
        if video_set:
            raise _bypass("video encoding options must be empty if transcoding is disabled")
        if audio_set:
            raise _bypass("audio encoding options must be empty if transcoding is disabled")


def _validate_video(options: pb.IngressVideoOptions) -> None:
    if options.source not in _VIDEO_SOURCES:
        raise _video("invalid track source")
    which = options.WhichOneof("encoding_options")
    if which == "preset":
        if options.preset not in pb.IngressVideoEncodingPreset.values():
            raise _video("invalid preset")
    elif which == "options":
        _validate_video_encoding(options.options)


def _validate_video_encoding(options: pb.IngressVideoEncodingOptions) -> None:
    if options.frame_rate < 0:
        raise _video("invalid framerate")
    if options.video_codec not in _VIDEO_CODECS:
        raise _video("video codec unsupported")
    by_quality: dict[int, models.VideoLayer] = {}
    for layer in options.layers:
        if layer.width == 0 or layer.height == 0:
            raise _video("invalid output media dimensions")
        if layer.width % 2:
            raise _ingress("layer width must be even")
        if layer.height % 2:
            raise _ingress("layer height must be even")
        if layer.quality in by_quality:
            raise _video("more than one layer with the same quality level")
        by_quality[layer.quality] = layer
    width = height = 0
    for quality in (models.VideoQuality.LOW, models.VideoQuality.MEDIUM, models.VideoQuality.HIGH):
        layer = by_quality.get(quality)
        if layer is None:
            continue
        if layer.height < height:
            raise _video("video layers do not have increasing height with increasing quality")
        if layer.width < width:
            raise _video("video layers do not have increasing width with increasing quality")
        width, height = layer.width, layer.height


def _validate_audio(options: pb.IngressAudioOptions) -> None:
    if options.source not in _AUDIO_SOURCES:
        raise _audio("invalid track source")
    which = options.WhichOneof("encoding_options")
    if which == "preset":
        if options.preset not in pb.IngressAudioEncodingPreset.values():
            raise _audio("invalid preset")
    elif which == "options":
        if options.options.audio_codec not in _AUDIO_CODECS:
            raise _audio("audio codec unsupported")
        if options.options.channels > 2:
            raise _audio("invalid audio channel count")
