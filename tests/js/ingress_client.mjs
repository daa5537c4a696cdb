// Drives the official livekit-server-sdk IngressClient against an Ingress API.
// Usage: node ingress_client.mjs <url> <apiKey> <apiSecret>
// Prints one JSON document with what each step returned, for pytest to check.
import { IngressClient } from 'livekit-server-sdk';
import {
  IngressInput,
  IngressVideoOptions,
  IngressAudioOptions,
  IngressVideoEncodingPreset,
  IngressAudioEncodingOptions,
  IngressVideoEncodingOptions,
  AudioCodec,
  VideoCodec,
  VideoLayer,
  VideoQuality,
  TrackSource,
} from '@livekit/protocol';

const [url, apiKey, apiSecret] = process.argv.slice(2);
const client = new IngressClient(url, apiKey, apiSecret);
const out = {};
const plain = (info) => info.toJson({ emitDefaultValues: true });

async function refused(fn) {
  try {
    await fn();
    return { ok: true };
  } catch (err) {
    return { code: err.code, message: err.message, status: err.status };
  }
}

out.rtmp = plain(
  await client.createIngress(IngressInput.RTMP_INPUT, {
    name: 'js-rtmp',
    roomName: 'js-room',
    participantIdentity: 'js-obs',
    participantName: 'JS OBS',
    video: new IngressVideoOptions({
      name: 'camera',
      source: TrackSource.CAMERA,
      encodingOptions: { case: 'preset', value: IngressVideoEncodingPreset.H264_1080P_30FPS_3_LAYERS },
    }),
    audio: new IngressAudioOptions({
      name: 'mic',
      source: TrackSource.MICROPHONE,
      encodingOptions: {
        case: 'options',
        value: new IngressAudioEncodingOptions({ audioCodec: AudioCodec.OPUS, bitrate: 64000, channels: 1, disableDtx: true }),
      },
    }),
  }),
);
out.whip = plain(
  await client.createIngress(IngressInput.WHIP_INPUT, {
    name: 'js-whip',
    roomName: 'js-room',
    participantIdentity: 'js-browser',
    enableTranscoding: true,
    video: new IngressVideoOptions({
      encodingOptions: {
        case: 'options',
        value: new IngressVideoEncodingOptions({
          videoCodec: VideoCodec.VP8,
          frameRate: 25,
          layers: [new VideoLayer({ quality: VideoQuality.HIGH, width: 1280, height: 720, bitrate: 2000000 })],
        }),
      },
    }),
  }),
);
out.url = plain(
  await client.createIngress(IngressInput.URL_INPUT, {
    name: 'js-url',
    roomName: 'js-room',
    participantIdentity: 'js-pull',
    url: 'https://127.0.0.1/video.mp4',
  }),
);
out.listRoom = (await client.listIngress({ roomName: 'js-room' })).map(plain);
out.listId = (await client.listIngress({ ingressId: out.whip.ingressId })).map(plain);
out.updated = plain(
  await client.updateIngress(out.rtmp.ingressId, { name: 'js-rtmp-2', roomName: 'js-room-2', enabled: false }),
);
out.deleted = plain(await client.deleteIngress(out.whip.ingressId));
out.listAfter = (await client.listIngress({ roomName: 'js-room' })).map(plain);
out.invalid = await refused(() =>
  client.createIngress(IngressInput.RTMP_INPUT, {
    participantIdentity: 'odd',
    roomName: 'x',
    video: new IngressVideoOptions({
      encodingOptions: {
        case: 'options',
        value: new IngressVideoEncodingOptions({
          layers: [new VideoLayer({ quality: VideoQuality.HIGH, width: 1281, height: 720 })],
        }),
      },
    }),
  }),
);
out.notFound = await refused(() => client.deleteIngress('IN_doesnotexist'));
out.unauthorized = await refused(() => new IngressClient(url, apiKey, 'wrong-secret-wrong-secret-wrong').listIngress());
console.log(JSON.stringify(out));
