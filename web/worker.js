// The E2EE worker: every RTCRtpScriptTransform of the page runs here (one worker per call).
// Senders seal each encoded frame with SFrame (RFC 9605, suite 4); receivers open them.
// One SFrame sender (one KID, one CTR) serves audio, video and chat, as in e2ee-client, so a
// (KID, CTR) pair, and so an AES-GCM nonce, is never used twice. Frames before the keys
// exist are dropped, never sent in the clear. Nothing here logs key material.
import { SframeSender, SframeReceiver, sealMedia, openMedia, SframeError } from './sframe.js';

// 'e2ee' | 'passthrough' (a standard call the person agreed to; never once keyed). Until
// told otherwise, and without keys, every frame is dropped.
let mode = 'e2ee';
let sender = null;
let receiver = null;
const stats = { frames_encrypted: 0, frames_decrypted: 0, decrypt_failures: 0, dropped_before_keys: 0, empty_frames: 0, last_error: null };
const transformers = new Set();

function b64encode(bytes) {
  let s = '';
  for (const b of bytes) s += String.fromCharCode(b);
  return btoa(s);
}

function b64decode(text) {
  return Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
}

const enc = new TextEncoder();
const dec = new TextDecoder('utf-8', { fatal: false });
const CHAT_META = enc.encode('chat');
const CHAT_PREFIX = 'sframe:';

function askKeyFrames() {
  for (const t of transformers) {
    const { side, kind } = t.options || {};
    if (kind !== 'video') continue;
    try {
      if (side === 'send' && t.generateKeyFrame) t.generateKeyFrame().catch(() => {});
      if (side === 'recv' && t.sendKeyFrameRequest) t.sendKeyFrameRequest().catch(() => {});
    } catch (e) { /* not supported: the decoder's own keyframe request does it */ }
  }
}

function setup(transformer) {
  const { side, kind } = transformer.options || {};
  transformers.add(transformer);
  const transform = new TransformStream({
    async transform(frame, controller) {
      if (mode === 'passthrough') { controller.enqueue(frame); return; }
      const data = new Uint8Array(frame.data);
      if (side === 'send') {
        if (!sender) { stats.dropped_before_keys++; return; }
        const sealed = await sealMedia(sender, kind, data);
        frame.data = sealed.buffer;
        stats.frames_encrypted++;
        controller.enqueue(frame);
      } else {
        if (!receiver) { stats.dropped_before_keys++; return; }
        // Chromium now and then hands the receiver an empty audio frame (no payload): it
        // holds neither ciphertext nor media, so it is dropped and counted, not "opened".
        if (data.length === 0) { stats.empty_frames++; return; }
        try {
          const opened = await openMedia(receiver, kind, data);
          frame.data = opened.buffer;
          stats.frames_decrypted++;
          controller.enqueue(frame);
        } catch (e) {
          stats.decrypt_failures++;
          stats.last_error = `${kind}: ${e instanceof SframeError ? e.code : String(e && e.name)} (${data.length} bytes, type ${frame.type || '-'})`;
        }
      }
    },
  });
  transformer.readable.pipeThrough(transform).pipeTo(transformer.writable).catch(() => {});
}

self.onrtctransform = (event) => setup(event.transformer);

self.onmessage = async (event) => {
  const m = event.data || {};
  try {
    switch (m.type) {
      case 'keys': {
        sender = await SframeSender.create(m.sendKey, m.sendKid);
        receiver = await SframeReceiver.create(m.recvKey, m.recvKid);
        m.sendKey.fill(0);
        m.recvKey.fill(0);
        askKeyFrames();
        self.postMessage({ type: 'keyed' });
        break;
      }
      case 'mode':
        // Once keyed, never passthrough: a call with keys stays sealed whatever the relay
        // says (the page refuses such a downgrade too; this holds if it did not).
        mode = m.mode === 'passthrough' && !sender ? 'passthrough' : 'e2ee';
        break;
      case 'seal_chat': {
        if (!sender) { self.postMessage({ type: 'reply', id: m.id, error: 'no keys yet' }); break; }
        const sealed = await sender.seal(CHAT_META, enc.encode(m.text));
        self.postMessage({ type: 'reply', id: m.id, body: CHAT_PREFIX + b64encode(sealed) });
        break;
      }
      case 'open_chat': {
        if (!m.body.startsWith(CHAT_PREFIX)) { self.postMessage({ type: 'reply', id: m.id, text: m.body, sealed: false }); break; }
        if (!receiver) { self.postMessage({ type: 'reply', id: m.id, error: 'sealed chat, no keys' }); break; }
        try {
          const r = await receiver.open(CHAT_META, b64decode(m.body.slice(CHAT_PREFIX.length)));
          self.postMessage({ type: 'reply', id: m.id, text: dec.decode(r.plaintext), sealed: true });
        } catch (e) {
          self.postMessage({ type: 'reply', id: m.id, error: 'chat that does not open' });
        }
        break;
      }
      case 'stats':
        self.postMessage({ type: 'stats', id: m.id, stats: { ...stats } });
        break;
      default:
        break;
    }
  } catch (e) {
    self.postMessage({ type: 'reply', id: m.id, error: String(e && e.message ? e.message : e) });
  }
};
