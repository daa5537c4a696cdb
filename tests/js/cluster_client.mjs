// The official livekit-server-sdk IngressClient against a LiveKit server whose
// ingress workers are our nodes (cluster mode): create a URL ingress, then read its
// state from the server until it is COMPLETE (or 40 s pass).
// Usage: node cluster_client.mjs <livekitUrl> <apiKey> <apiSecret> <mediaUrl> <room>
// Prints one JSON document: the created ingress and the statuses seen, in order.
import { IngressClient } from 'livekit-server-sdk';
import { IngressInput, IngressState_Status } from '@livekit/protocol';

const [host, apiKey, apiSecret, mediaUrl, room] = process.argv.slice(2);
const client = new IngressClient(host, apiKey, apiSecret);
const info = await client.createIngress(IngressInput.URL_INPUT, {
  name: 'js-pull',
  roomName: room,
  participantIdentity: 'js-puller',
  url: mediaUrl,
});
const statuses = [];
const deadline = Date.now() + 40000;
while (Date.now() < deadline) {
  const [item] = await client.listIngress({ ingressId: info.ingressId });
  const status = IngressState_Status[item.state?.status ?? 0];
  if (statuses[statuses.length - 1] !== status) statuses.push(status);
  if (status === 'ENDPOINT_COMPLETE' || status === 'ENDPOINT_ERROR') break;
  await new Promise((resolve) => setTimeout(resolve, 300));
}
console.log(JSON.stringify({ info: info.toJson({ emitDefaultValues: true }), statuses }));
