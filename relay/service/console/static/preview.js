// The live preview: a hidden, subscribe-only participant (a 10-minute token from the
// node) watches the ingress' tracks with livekit-client; the layer selector asks the
// SFU for LOW/MEDIUM/HIGH, and the overlay shows what arrives.
"use strict";

(function () {
  const box = document.getElementById("preview");
  if (!box || !window.LivekitClient) return;
  const LK = window.LivekitClient;
  const video = document.getElementById("video");
  const overlay = document.getElementById("overlay");
  const state = document.getElementById("preview-state");
  const quality = document.getElementById("quality");
  const level = document.getElementById("level");
  const watchButton = document.getElementById("watch");
  const audio = document.getElementById("audio");
  const sound = document.getElementById("sound");
  let room = null, videoPub = null, audioTrack = null, last = null, timer = null;

  function say(text) { state.textContent = text; }

  function applyQuality() {
    if (videoPub) videoPub.setVideoQuality(LK.VideoQuality[quality.value]);
  }

  async function measure() {
    const track = videoPub && videoPub.track;
    if (!track || !track.receiver) return;
    const stats = await track.receiver.getStats();
    let inbound = null, codec = "";
    stats.forEach(s => { if (s.type === "inbound-rtp" && s.kind === "video") inbound = s; });
    if (!inbound) return;
    const c = inbound.codecId && stats.get(inbound.codecId);
    codec = c ? c.mimeType.replace("video/", "") : "?";
    const kbps = last
      ? (8 * (inbound.bytesReceived - last.bytes) / (inbound.timestamp - last.time)).toFixed(0)
      : "…";
    last = {bytes: inbound.bytesReceived, time: inbound.timestamp};
    const fps = inbound.framesPerSecond || 0;
    overlay.textContent = `${codec} ${video.videoWidth}x${video.videoHeight} ` +
      `${fps.toFixed(0)} fps ${kbps} kbit/s · layer ${quality.value}`;
    box.dataset.width = video.videoWidth;
    box.dataset.height = video.videoHeight;
    if (audioTrack) level.value = audioLevel();
    level.textContent = level.value.toFixed(2);
  }

  let analyser = null, samples = null;
  function audioLevel() {
    if (!analyser) return 0;
    analyser.getFloatTimeDomainData(samples);
    let sum = 0;
    for (const v of samples) sum += v * v;
    return Math.min(1, Math.sqrt(sum / samples.length) * 4);
  }

  function listenTo(track) {
    try {
      const context = new AudioContext();
      const source = context.createMediaStreamSource(new MediaStream([track.mediaStreamTrack]));
      analyser = context.createAnalyser();
      analyser.fftSize = 1024;
      samples = new Float32Array(analyser.fftSize);
      source.connect(analyser);
      context.resume();
    } catch (e) { analyser = null; }
  }

  async function watch() {
    watchButton.disabled = true;
    say("Connecting…");
    const reply = await fetch(box.dataset.tokenUrl, {credentials: "same-origin"});
    if (!reply.ok) { say("The node would not give a preview token."); watchButton.disabled = false; return; }
    const grant = await reply.json();
    room = new LK.Room({adaptiveStream: false, dynacast: false});
    room.on(LK.RoomEvent.TrackSubscribed, (track, publication, participant) => {
      if (participant.identity !== grant.participant) return;
      if (track.kind === "video") {
        videoPub = publication;
        track.attach(video);
        applyQuality();
        say(`Watching ${participant.identity}.`);
      } else if (track.kind === "audio") {
        audioTrack = track;
        track.attach(audio);  // Chrome feeds WebAudio from remote tracks that play
        listenTo(track);
      }
    });
    room.on(LK.RoomEvent.TrackUnsubscribed, (track) => {
      track.detach();
      if (track.kind === "video") { videoPub = null; overlay.textContent = "no video"; }
    });
    room.on(LK.RoomEvent.Disconnected, () => { say("Disconnected."); watchButton.disabled = false; });
    try {
      await room.connect(grant.url, grant.token, {autoSubscribe: true});
    } catch (e) {
      say("Could not join the room: " + e.message);
      watchButton.disabled = false;
      return;
    }
    if (!videoPub) say(`In room ${room.name}; waiting for ${grant.participant}'s tracks…`);
    timer = setInterval(measure, 1000);
  }

  watchButton.addEventListener("click", watch);
  quality.addEventListener("change", applyQuality);
  sound.addEventListener("change", () => { audio.muted = !sound.checked; });
  window.addEventListener("pagehide", () => { if (room) room.disconnect(); if (timer) clearInterval(timer); });
})();
