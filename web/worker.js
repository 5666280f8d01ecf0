// The E2EE worker: every RTCRtpScriptTransform of the page runs here (one worker per call).
// Senders seal each encoded frame with SFrame (RFC 9605, suite 4); receivers open them.
// One SFrame sender (one KID, one CTR) serves audio, video and chat, as in e2ee-client, so a
// (KID, CTR) pair, and so an AES-GCM nonce, is never used twice. Frames before the keys
// exist are dropped, never sent in the clear. Nothing here logs key material.
import { SframeSender, SframeReceiver, sealMedia, openMedia, SframeError } from './sframe.js';
import { GroupSession, OpenError, EARLY_FRAME_WAIT_MS } from './group.js';

// 'e2ee' | 'passthrough' (a standard call the person agreed to; never once keyed). Until
// told otherwise, and without keys, every frame is dropped.
let mode = 'e2ee';
let sender = null;
let receiver = null;
const stats = { frames_encrypted: 0, frames_decrypted: 0, decrypt_failures: 0, frames_replayed: 0, dropped_before_keys: 0, empty_frames: 0, last_error: null, frames_decrypted_from: {}, first_decrypted_at: {}, early_frames_held: 0, first_key_at: {} };

// A group call (scheme `mls`): the MLS state and its SFrame keys live here only (web/group.js);
// the main thread relays signalling and sees group.summary(), which holds no secret.
let group = null;
let groupOps = Promise.resolve();
let epochWaiters = [];
const now = () => performance.now();

/** Resolves when the group reaches a new epoch, or after `ms`. */
function nextEpoch(ms) {
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    epochWaiters.push(() => { clearTimeout(t); resolve(); });
  });
}

/** The group as an SFrame sender/receiver for sealMedia/openMedia. A frame of an epoch this
 * member has not reached yet (media overtakes the commit) waits for it, up to 2 s. */
const groupSender = { seal: (meta, pt) => group.seal(meta, pt) };
const groupReceiver = groupOpener(true);
const groupChatReceiver = groupOpener(false);
function groupOpener(media) {
  return { async open(meta, frame) {
    const deadline = now() + EARLY_FRAME_WAIT_MS;
    for (;;) {
      try {
        const r = await group.open(now(), meta, frame, null, false);
        if (media) {
          const who = r.from || '?';
          stats.frames_decrypted_from[who] = (stats.frames_decrypted_from[who] || 0) + 1;
          // Wall-clock ms (timeOrigin + now), comparable with the main thread's.
          stats.first_decrypted_at[who] ??= performance.timeOrigin + now();
        }
        return r;
      } catch (e) {
        if (!(e instanceof OpenError && e.code === 'early') || now() >= deadline) throw e;
        stats.early_frames_held++;
        await nextEpoch(deadline - now());
      }
    }
  } };
}

function groupKeyed() {
  return group !== null && group.keyed();
}

/** Run one group operation at a time; reply with what to send and the summary. */
function groupOp(id, f) {
  groupOps = groupOps.then(async () => {
    const before = group ? group.epoch() : null;
    let out = [];
    let error = null;
    try { out = await f(); } catch (e) { error = String(e && e.message ? e.message : e); }
    if (group && group.epoch() !== before) {
      for (const w of epochWaiters.splice(0)) w();
      askKeyFrames();
    }
    self.postMessage({ type: 'reply', id, out, error, summary: group ? group.summary() : null });
  });
}
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
        const s = group ? (groupKeyed() ? groupSender : null) : sender;
        if (!s) { stats.dropped_before_keys++; return; }
        const sealed = await sealMedia(s, kind, data);
        frame.data = sealed.buffer;
        stats.frames_encrypted++;
        controller.enqueue(frame);
      } else {
        const r = group ? (group.inGroup() ? groupReceiver : null) : receiver;
        if (!r) { stats.dropped_before_keys++; return; }
        // Chromium now and then hands the receiver an empty audio frame (no payload): it
        // holds neither ciphertext nor media, so it is dropped and counted, not "opened".
        if (data.length === 0) { stats.empty_frames++; return; }
        try {
          const opened = await openMedia(r, kind, data);
          frame.data = opened.buffer;
          stats.frames_decrypted++;
          // When the first key frame of each incoming stream (by SSRC) could go to the
          // decoder: a picture can start only there.
          if (kind === 'video' && frame.type === 'key') {
            const ssrc = frame.getMetadata().synchronizationSource;
            stats.first_key_at[ssrc] ??= performance.timeOrigin + now();
          }
          controller.enqueue(frame);
        } catch (e) {
          // Sealed before this page joined the group: never meant for it (as e2ee-client).
          if (e instanceof OpenError && e.code === 'before_join') { stats.dropped_before_keys++; return; }
          // A frame opened once already, handed over again: a retransmitted packet that
          // came after its frame was assembled makes the browser assemble the frame a
          // second time. Refused by the replay window, and counted apart: it is not a
          // frame that failed to open.
          if ((e instanceof SframeError || e instanceof OpenError) && e.code === 'replay') { stats.frames_replayed++; return; }
          stats.decrypt_failures++;
          stats.last_error = `${kind}: ${e instanceof SframeError || e instanceof OpenError ? e.code : String(e && e.name)} (${data.length} bytes, type ${frame.type || '-'})`;
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
      case 'reset':
        // The page joins again through another node (its own went away, and with it the
        // origin this worker's scripts came from, so the worker is kept): nothing of the
        // last session stays, keys and group least of all.
        mode = 'e2ee';
        sender = null;
        receiver = null;
        group = null;
        groupOps = Promise.resolve();
        epochWaiters = [];
        transformers.clear();
        for (const k of Object.keys(stats)) stats[k] = typeof stats[k] === 'number' ? 0 : (k === 'last_error' ? null : {});
        break;
      case 'forget':
        // A 1:1 call's other person left: their keys go, and nothing is sealed until the
        // next person's key agreement (never under keys agreed with someone gone).
        sender = null;
        receiver = null;
        break;
      case 'mls_start':
        // Once per call: the participant's identity and the others the relay listed.
        if (group) { self.postMessage({ type: 'reply', id: m.id, error: 'group already started' }); break; }
        group = new GroupSession(m.me, m.call, { user: m.user });
        groupOp(m.id, () => group.start(now(), m.participants || []));
        break;
      case 'mls_signal':
        if (!group) { self.postMessage({ type: 'reply', id: m.id, error: 'no group' }); break; }
        groupOp(m.id, () => group.onMessage(now(), m.msg));
        break;
      case 'mode':
        // Once keyed, never passthrough: a call with keys stays sealed whatever the relay
        // says (the page refuses such a downgrade too; this holds if it did not).
        mode = m.mode === 'passthrough' && !sender && !group ? 'passthrough' : 'e2ee';
        break;
      case 'seal_chat': {
        const s = group ? (groupKeyed() ? groupSender : null) : sender;
        if (!s) { self.postMessage({ type: 'reply', id: m.id, error: 'no keys yet' }); break; }
        const sealed = await s.seal(CHAT_META, enc.encode(m.text));
        self.postMessage({ type: 'reply', id: m.id, body: CHAT_PREFIX + b64encode(sealed) });
        break;
      }
      case 'open_chat': {
        if (!m.body.startsWith(CHAT_PREFIX)) { self.postMessage({ type: 'reply', id: m.id, text: m.body, sealed: false }); break; }
        const rx = group ? (group.inGroup() ? groupChatReceiver : null) : receiver;
        if (!rx) { self.postMessage({ type: 'reply', id: m.id, error: 'sealed chat, no keys' }); break; }
        try {
          const r = await rx.open(CHAT_META, b64decode(m.body.slice(CHAT_PREFIX.length)));
          self.postMessage({ type: 'reply', id: m.id, text: dec.decode(r.plaintext), sealed: true });
        } catch (e) {
          self.postMessage({ type: 'reply', id: m.id, error: 'chat that does not open' });
        }
        break;
      }
      case 'stats':
        // Superseded epochs' keys go when their grace ends, even with no frame to open.
        if (group) group.frames.expire(now());
        self.postMessage({ type: 'stats', id: m.id, stats: { ...stats, frames_decrypted_from: { ...stats.frames_decrypted_from }, first_decrypted_at: { ...stats.first_decrypted_at }, first_key_at: { ...stats.first_key_at } }, summary: group ? group.summary() : null });
        break;
      default:
        break;
    }
  } catch (e) {
    self.postMessage({ type: 'reply', id: m.id, error: String(e && e.message ? e.message : e) });
  }
};
