"""The console's forms and rows: HTML form fields to API requests, API errors to the
field they are about, IngressInfo to what a row shows. No I/O: the routes call these."""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field

from livekit.protocol import ingress as pb
from livekit.protocol import models

INPUTS = {"RTMP_INPUT": "RTMP", "WHIP_INPUT": "WHIP", "URL_INPUT": "URL"}
VIDEO_PRESETS = list(pb.IngressVideoEncodingPreset.keys())
AUDIO_PRESETS = list(pb.IngressAudioEncodingPreset.keys())
VIDEO_CODECS = ["H264_BASELINE", "H264_MAIN", "H264_HIGH", "VP8"]
QUALITIES = ["LOW", "MEDIUM", "HIGH"]
MAX_LAYERS = 3
STATUS_TEXT = {
    pb.IngressState.ENDPOINT_INACTIVE: ("inactive", "idle"),
    pb.IngressState.ENDPOINT_BUFFERING: ("buffering", "warn"),
    pb.IngressState.ENDPOINT_PUBLISHING: ("publishing", "live"),
    pb.IngressState.ENDPOINT_ERROR: ("error", "bad"),
    pb.IngressState.ENDPOINT_COMPLETE: ("complete", "idle"),
}
# the API's validation texts (api/validation.py) by the field they are about
_FIELD_OF_ERROR = (("invalid url", "url"), ("missing url", "url"), ("room name", "room_name"),
                   ("participant identity", "participant_identity"),
                   ("ingress type", "input_type"), ("non reusable", "enabled"),
                   ("transcoding", "transcoding"), ("video", "video"), ("layer", "video"),
                   ("audio", "audio"))


class FormError(Exception):
    """A field the API would not even receive (not a number, say), with its field."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(message)
        self.field = field_name


def field_of_error(message: str) -> str:
    """The form field an API error message is about ("" for the form as a whole)."""
    lowered = message.lower()
    return next((name for needle, name in _FIELD_OF_ERROR if needle in lowered), "")


@dataclass
class IngressForm:
    """The form's values, as text (what the page shows back after an error)."""

    name: str = ""
    input_type: str = "RTMP_INPUT"
    url: str = ""
    room_name: str = ""
    participant_identity: str = ""
    participant_name: str = ""
    participant_metadata: str = ""
    enabled: bool = True
    transcoding: str = ""  # "", "on", "off" (WHIP)
    video_mode: str = "preset"
    video_preset: str = ""  # "": the API's default
    video_codec: str = "H264_BASELINE"
    frame_rate: str = "30"
    layers: list[dict[str, str]] = field(default_factory=list)
    audio_mode: str = "preset"
    audio_preset: str = ""
    audio_bitrate: str = "96000"
    audio_channels: str = "2"
    disable_dtx: bool = False

    @classmethod
    def from_fields(cls, fields: Mapping[str, str]) -> IngressForm:
        def text(name: str, default: str = "") -> str:
            return fields.get(name, default).strip()

        layers = [{k: text(f"layer{i}_{k}") for k in ("quality", "width", "height", "bitrate")}
                  for i in range(MAX_LAYERS)]
        return cls(
            name=text("name"), input_type=text("input_type", "RTMP_INPUT"), url=text("url"),
            room_name=text("room_name"), participant_identity=text("participant_identity"),
            participant_name=text("participant_name"),
            participant_metadata=fields.get("participant_metadata", ""),
            enabled="enabled" in fields, transcoding=text("transcoding"),
            video_mode=text("video_mode", "preset"), video_preset=text("video_preset"),
            video_codec=text("video_codec", "H264_BASELINE"), frame_rate=text("frame_rate"),
            layers=layers, audio_mode=text("audio_mode", "preset"),
            audio_preset=text("audio_preset"), audio_bitrate=text("audio_bitrate"),
            audio_channels=text("audio_channels"), disable_dtx="disable_dtx" in fields)

    @classmethod
    def from_info(cls, info: pb.IngressInfo) -> IngressForm:
        form = cls(name=info.name, input_type=pb.IngressInput.Name(info.input_type),
                   url=info.url if info.input_type == pb.IngressInput.URL_INPUT else "",
                   room_name=info.room_name, participant_identity=info.participant_identity,
                   participant_name=info.participant_name,
                   participant_metadata=info.participant_metadata,
                   enabled=info.enabled if info.HasField("enabled") else True)
        if info.HasField("enable_transcoding"):
            form.transcoding = "on" if info.enable_transcoding else "off"
        video, audio = info.video, info.audio
        if video.WhichOneof("encoding_options") == "options":
            form.video_mode = "custom"
            form.video_codec = models.VideoCodec.Name(video.options.video_codec)
            form.frame_rate = f"{video.options.frame_rate:g}"
            form.layers = [{"quality": models.VideoQuality.Name(layer.quality),
                            "width": str(layer.width), "height": str(layer.height),
                            "bitrate": str(layer.bitrate)} for layer in video.options.layers]
        elif video.WhichOneof("encoding_options") == "preset":
            form.video_preset = pb.IngressVideoEncodingPreset.Name(video.preset)
        if audio.WhichOneof("encoding_options") == "options":
            form.audio_mode = "custom"
            form.audio_bitrate = str(audio.options.bitrate)
            form.audio_channels = str(audio.options.channels)
            form.disable_dtx = audio.options.disable_dtx
        elif audio.WhichOneof("encoding_options") == "preset":
            form.audio_preset = pb.IngressAudioEncodingPreset.Name(audio.preset)
        return form

    def padded_layers(self) -> list[dict[str, str]]:
        """MAX_LAYERS rows for the page (the empty ones add a layer when filled)."""
        blank = {"quality": "", "width": "", "height": "", "bitrate": ""}
        return (self.layers + [dict(blank) for _ in range(MAX_LAYERS)])[:MAX_LAYERS]

    # -- to the API ------------------------------------------------------------------

    def create_request(self) -> pb.CreateIngressRequest:
        request = pb.CreateIngressRequest(
            input_type=_enum(pb.IngressInput, self.input_type, "input_type"),
            url=self.url if self.input_type == "URL_INPUT" else "",
            name=self.name, room_name=self.room_name,
            participant_identity=self.participant_identity,
            participant_name=self.participant_name,
            participant_metadata=self.participant_metadata, enabled=self.enabled)
        self._media_options(request)
        return request

    def update_request(self, ingress_id: str) -> pb.UpdateIngressRequest:
        request = pb.UpdateIngressRequest(
            ingress_id=ingress_id, name=self.name, room_name=self.room_name,
            participant_identity=self.participant_identity,
            participant_name=self.participant_name,
            participant_metadata=self.participant_metadata, enabled=self.enabled)
        self._media_options(request)
        return request

    def _media_options(self, request: pb.CreateIngressRequest | pb.UpdateIngressRequest
                       ) -> None:
        if self.input_type == "WHIP_INPUT" and self.transcoding in ("on", "off"):
            request.enable_transcoding = self.transcoding == "on"
        transcoding_off = self.input_type == "WHIP_INPUT" and self.transcoding != "on"
        if self.video_mode == "custom" and not transcoding_off:
            request.video.options.CopyFrom(self._video_options())
        elif self.video_preset:
            request.video.preset = _enum(pb.IngressVideoEncodingPreset, self.video_preset,
                                         "video")
        if self.audio_mode == "custom" and not transcoding_off:
            request.audio.options.CopyFrom(pb.IngressAudioEncodingOptions(
                audio_codec=models.AudioCodec.OPUS,
                bitrate=_number(self.audio_bitrate, "audio", "audio bitrate"),
                channels=_number(self.audio_channels, "audio", "audio channels"),
                disable_dtx=self.disable_dtx))
        elif self.audio_preset:
            request.audio.preset = _enum(pb.IngressAudioEncodingPreset, self.audio_preset,
                                         "audio")

    def _video_options(self) -> pb.IngressVideoEncodingOptions:
        try:
            frame_rate = float(self.frame_rate)
        except ValueError:
            raise FormError("video", "the frame rate must be a number") from None
        options = pb.IngressVideoEncodingOptions(
            video_codec=_enum(models.VideoCodec, self.video_codec, "video"),
            frame_rate=frame_rate)
        for row in self.layers:
            if not (row.get("width") or row.get("height")):
                continue
            options.layers.append(models.VideoLayer(
                quality=_enum(models.VideoQuality, row.get("quality") or "HIGH", "video"),
                width=_number(row.get("width", ""), "video", "layer width"),
                height=_number(row.get("height", ""), "video", "layer height"),
                bitrate=_number(row.get("bitrate", ""), "video", "layer bitrate")))
        return options


def _enum(enum: object, name: str, field_name: str) -> int:
    try:
        return enum.Value(name)  # type: ignore[attr-defined, no-any-return]
    except ValueError:
        raise FormError(field_name, f"unknown value {name!r}") from None


def _number(text: str, field_name: str, what: str) -> int:
    if not text.isdigit():
        raise FormError(field_name, f"the {what} must be a whole number")
    return int(text)


# -- what the pages show of an ingress ---------------------------------------------------


@dataclass(frozen=True)
class PublisherSettings:
    """What a publisher types in, each with a copy button."""

    label: str
    value: str


def publisher_settings(info: pb.IngressInfo) -> list[PublisherSettings]:
    if info.input_type == pb.IngressInput.RTMP_INPUT:
        target = f"{info.url.rstrip('/')}/{info.stream_key}"
        test = ("ffmpeg -re -f lavfi -i testsrc2=size=1280x720:rate=30 "
                "-f lavfi -i sine=frequency=440 -c:v libx264 -preset veryfast "
                "-tune zerolatency -pix_fmt yuv420p -g 60 -c:a aac -f flv "
                + shlex.quote(target))
        return [PublisherSettings("OBS Server", info.url),
                PublisherSettings("OBS Stream Key", info.stream_key),
                PublisherSettings("ffmpeg test stream", test)]
    if info.input_type == pb.IngressInput.WHIP_INPUT:
        return [PublisherSettings("WHIP URL (OBS: Service WHIP, Server)", info.url),
                PublisherSettings("Bearer token (OBS: Bearer Token)", info.stream_key),
                PublisherSettings("WHIP URL with the key in the path",
                                  f"{info.url.rstrip('/')}/{info.stream_key}")]
    return [PublisherSettings("Pulled URL", info.url)]


@dataclass(frozen=True)
class Row:
    """One ingress as the list shows it."""

    ingress_id: str
    name: str
    input: str
    room: str
    participant: str
    status: str
    status_class: str
    video: str
    audio: str
    error: str
    since_ms: int  # the page shows "since" in the browser's own time zone


def row(info: pb.IngressInfo) -> Row:
    state = info.state
    status, css = STATUS_TEXT.get(state.status, ("unknown", "idle"))
    video = audio = ""
    if state.video.width:
        video = (f"{state.video.width}x{state.video.height} {state.video.framerate:.0f} fps "
                 f"{state.video.average_bitrate / 1000:.0f} kbit/s")
    if state.audio.mime_type:
        audio = f"{state.audio.mime_type.split('/')[-1]} {state.audio.channels} ch"
    since = state.started_at if state.status in (pb.IngressState.ENDPOINT_BUFFERING,
                                                 pb.IngressState.ENDPOINT_PUBLISHING) \
        else (state.ended_at or state.updated_at)
    return Row(info.ingress_id, info.name, INPUTS.get(pb.IngressInput.Name(info.input_type),
                                                      "?"),
               info.room_name, info.participant_identity, status, css, video, audio,
               state.error, since // 1_000_000)
