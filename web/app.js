// blindrelay web client: signalling, WebRTC, end-to-end encryption (SFrame in an
// RTCRtpScriptTransform worker, keys from the same X25519 commit-reveal as e2ee-client), UI.
//
// Automation: window.blindrelay.state() returns the call's state (see README, "The web
// client"); URL parameters call, token, e2ee=1, autojoin=1 (and name= for a development
// token) join without clicks; window.blindrelay.answerDowngrade(true|false) answers the
// downgrade question.
//
// No downgrade without consent: the relay is the adversary, and its word that a call is
// standard is only a claim. A page that asked for E2EE sends nothing in the clear (media or
// chat) until the person has answered "Continue unencrypted" to the question the claim
// raises; until then the worker keeps dropping every frame. Once keys exist, a claim that the
// call is standard is refused outright: an honest relay never downgrades a call that can hold
// keys (two members), so the page stays in the call, keeps sealing with the agreed keys, and
// says the relay tried.
import { KeyAgreement } from './kex.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);

const ERROR_TEXT = {
  unauthorized: 'The relay refused the token: it is not valid here.',
  token_expired: 'The token has expired: get a new one.',
  wrong_call: 'This token admits to another call.',
  bad_request: 'The relay could not use a request from this page.',
  unknown_message: 'The relay does not know a message this page sent.',
  message_too_large: 'That message is too large for the relay.',
  bad_sdp: "The relay could not use this browser's media description.",
  not_authenticated: 'This page has not signed in to the relay yet.',
  already_joined: 'You are already in this call.',
  not_joined: 'You are not in a call.',
  unknown_participant: 'That participant is not in the call.',
  call_full: 'The call is full.',
  e2ee_not_allowed: "Your organisation's policy does not allow end-to-end encrypted calls.",
  e2ee_required: 'This call must be end-to-end encrypted, and it cannot be with you in it.',
  e2ee_call_is_one_to_one: 'End-to-end encrypted calls are one-to-one, and this one already has two people.',
  e2ee_scheme_mismatch: 'This encrypted call uses another key scheme: it is a group call keyed with MLS and you asked for a one-to-one call, or the other way round. Choose the other scheme in the settings (or scheme=mls in the address) and join again.',
  e2ee_call_refuses_bots: 'End-to-end encrypted calls admit no recording, caption or transcription bots.',
  feature_unavailable_in_e2ee_call: 'This feature is unavailable on an end-to-end encrypted call.',
  unknown_feature: 'The relay does not offer this feature.',
  shutting_down: 'The relay is shutting down.',
  no_common_codec: "This browser offers none of the call's codecs (Opus, VP8).",
  relay_full: 'The relay is at capacity: try again later.',
  rate_limited: 'Too many requests: wait a moment and try again.',
  mls_refused: 'The relay refused a group key message from this client (MLS): it was not valid at this point of the call.',
  hello_timeout: 'The relay closed the connection: the page did not sign in in time.',
  merge_refused: 'You can only merge calls you are in.',
  ssrc_in_use: 'Another participant in this call already sends a stream with the same identifier (SSRC): reload the page to get new ones.',
  too_many_tracks: 'This page sends more audio or video tracks than the relay allows one participant.',
  unknown_track: 'The page asked about a remote track the relay never offered it.',
  internal: 'The relay hit an internal error.',
  dev_tokens_disabled: 'Development tokens are off on this relay.',
  signalling_closed: 'The connection to the relay closed.',
  media_failed: 'Camera or microphone unavailable.',
};

const E2EE_FEATURE_REASON = {
  record: 'Recording needs the media in the clear.',
  live_captions: 'Live captions need the audio in the clear.',
  transcription: 'Transcription needs the audio in the clear.',
  add_participant: 'An end-to-end encrypted call is one-to-one.',
  transfer: 'A transfer brings a third party into a one-to-one encrypted call.',
  consult_transfer: 'A consult transfer brings a third party into a one-to-one encrypted call.',
  merge: 'Merging joins other people to a one-to-one encrypted call.',
  park: 'Parking hands the call to whoever picks it up, outside the agreed keys.',
};
/** A group (MLS) call is not one-to-one: its members add each joiner themselves, with a
 * commit everyone checks against the roster. What the relay would do on its own (bring
 * someone in, hand a place over, join two calls) is refused for that reason. */
const E2EE_GROUP_FEATURE_REASON = {
  ...E2EE_FEATURE_REASON,
  add_participant: 'In an encrypted group call each person joins with their own invitation, and the members add them to the group themselves; the relay cannot bring anyone in.',
  transfer: 'A transfer would hand your place to someone the group did not add; they can join with their own invitation.',
  consult_transfer: 'A consult transfer would bring in someone the group did not add; they can join with their own invitation.',
  merge: 'Merging would bring another call\'s people in without the group adding them.',
};
const FEATURES = [
  ['record', 'Record'], ['live_captions', 'Live captions'], ['transcription', 'Transcription'],
  ['add_participant', 'Add participant', 'user'], ['transfer', 'Transfer', 'user'],
  ['consult_transfer', 'Consult transfer', 'user'], ['merge', 'Merge', 'call id'], ['park', 'Park'],
];

const st = {
  connected: false, capabilities: null, joined: false, callMode: null, modeReason: null, me: null, call: null,
  keyed: false, code: null, participants: new Map(), error: null, messages: [], chat: [], features: [],
  workerStats: { frames_encrypted: 0, frames_decrypted: 0, decrypt_failures: 0 }, inbound: [], outbound: [],
  payloadTypes: {}, kexError: null, joinedAt: null, groupCall: false,
  // When (wall-clock ms) this page first decoded a video frame from each participant.
  firstVideoAt: {},
  // Group calls (scheme mls): what the worker's group session shows (no secret in it).
  scheme: null, group: null, codeChanges: 0,
  // No downgrade without consent (see the top of the file).
  askedE2ee: false, clearConsent: false, pendingDowngrade: null, leftReason: null, downgradesRefused: 0,
  // Several relays (a cluster): the nodes this page may move to, the one it is on, and how
  // often it moved.
  nodes: [], nodeUrl: null, token: null, reconnects: 0, rejoining: false,
};
let ws = null, pc = null, localStream = null, worker = null, kex = null, earlyBlobs = [];
// Messages are handled one at a time, in order, per socket. Each socket has its own chain:
// a peer connection closed under a pending operation leaves that operation's promise
// unsettled for good (the spec says so), and must not hold up the next socket's messages.
let chain = Promise.resolve();
let remoteMsid = { byMid: {}, bySsrc: {} };
const ssrcOwner = {};
let rpcId = 0;
const rpcPending = new Map();
let timers = [];

// ---------- messages ----------

function describe(code, message) {
  const text = ERROR_TEXT[code] || 'The relay refused the request.';
  return message ? `${text} (${code}: ${message})` : `${text} (${code})`;
}

function showMessage(text, kind = 'error') {
  const el = $('message');
  el.textContent = text;
  el.className = kind === 'info' ? 'info' : '';
  el.hidden = false;
  st.messages.push({ kind, text });
  if (st.messages.length > 50) st.messages.shift();
}

// ---------- worker (E2EE) ----------

function startWorker() {
  worker = new Worker('/worker.js', { type: 'module', name: 'blindrelay-e2ee' });
  worker.onmessage = (ev) => {
    const m = ev.data || {};
    if (m.type === 'stats') st.workerStats = m.stats;
    if (m.summary) onGroupSummary(m.summary);
    if ((m.type === 'reply' || m.type === 'stats') && rpcPending.has(m.id)) {
      rpcPending.get(m.id)(m);
      rpcPending.delete(m.id);
    }
  };
}

function rpc(msg) {
  return new Promise((resolve) => {
    const id = ++rpcId;
    rpcPending.set(id, resolve);
    worker.postMessage({ ...msg, id });
  });
}

function attachSendTransform(sender, kind) {
  if (worker && 'RTCRtpScriptTransform' in window) sender.transform = new RTCRtpScriptTransform(worker, { side: 'send', kind });
}

function attachRecvTransform(receiver, kind) {
  if (worker && !receiver.transform) receiver.transform = new RTCRtpScriptTransform(worker, { side: 'recv', kind });
}

// ---------- signalling ----------

function send(m) {
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(m));
}

function ownSignalUrl() {
  return `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/v1/signal`;
}

// The relay's nodes (a cluster lists them at /v1/nodes; a lone relay lists none), so the
// page can move when its node goes away.
async function loadNodes() {
  try {
    const r = await fetch('/v1/nodes');
    const body = await r.json();
    st.nodes = (body.nodes || []).map((n) => n.signal_url).filter((u) => typeof u === 'string');
  } catch (e) { st.nodes = []; }
}

// Closes after which the call goes on through another node: the node went away
// (node_lost, shutdown), the call's owner could not be reached, or the connection just
// broke (1006). A refusal of this person is never retried.
function movable(ev) {
  return ['node_lost', 'shutdown', 'owner_unavailable'].includes(ev.reason) || (ev.code === 1006 && !ev.reason);
}

// How long a node has to answer a hello, and then a join, before the page tries the next:
// a node that is draining, or whose call's owner has just gone, may accept the connection
// and never answer.
const NODE_ANSWER_MS = 5000;

// Settled by the first of: joined, an error before joining, the socket closing, or the
// deadline. Only the rejoin loop waits on it.
let joinWait = null;
function settleJoin(ok) {
  if (joinWait) { const w = joinWait; joinWait = null; w(ok); }
}
function joinedWithin(ms) {
  if (st.joined) return Promise.resolve(true);
  return new Promise((resolve) => {
    const timer = setTimeout(() => settleJoin(false), ms);
    joinWait = (ok) => { clearTimeout(timer); resolve(ok); };
  });
}

// Join the same call again through the next node (wrapping round), with new keys, backing
// off from 100 ms to 1 s, for up to 30 s. An attempt counts only once the node has said
// `joined`; one that stays silent, refuses or closes moves on to the next node.
async function rejoin() {
  if (st.rejoining) return;
  st.rejoining = true;
  const list = st.nodes.length ? st.nodes : [ownSignalUrl()];
  let i = Math.max(0, list.indexOf(st.nodeUrl));
  let wait = 100;
  const until = performance.now() + 30000;
  try {
    while (performance.now() < until) {
      i = (i + 1) % list.length;
      await new Promise((r) => setTimeout(r, wait));
      wait = Math.min(wait * 2, 1000);
      if (await connect(st.token, list[i], NODE_ANSWER_MS)) {
        const joined = joinedWithin(NODE_ANSWER_MS);
        await join();
        if (await joined) {
          st.reconnects += 1;
          return;
        }
        if (st.joined) endCall(false, true);
        if (ws) try { ws.close(); } catch (e) { /* moving on anyway */ }
      }
    }
    showMessage(describe('signalling_closed', 'no node of the relay took the call back'));
  } finally {
    st.rejoining = false;
  }
}

// Resolves true once the node sends its capabilities, false if the socket closes first or
// (with `answerMs`) the node stays silent that long: the socket is then given up.
function connect(token, url = ownSignalUrl(), answerMs = 0) {
  return new Promise((outcome) => {
    let silent = null;
    const resolve = (ok) => { if (silent) clearTimeout(silent); outcome(ok); };
    if (ws) try { ws.close(); } catch (e) { /* closing anyway */ }
    st.capabilities = null;
    st.token = token;
    st.nodeUrl = url;
    const sock = new WebSocket(url);
    ws = sock;
    chain = Promise.resolve();
    if (answerMs) {
      silent = setTimeout(() => {
        if (ws !== sock || st.capabilities) return;
        ws = null;
        try { sock.close(); } catch (e) { /* giving up on it anyway */ }
        resolve(false);
      }, answerMs);
    }
    ws.onopen = () => { st.connected = true; send({ type: 'hello', token }); };
    ws.onclose = (ev) => {
      if (ws !== sock) { resolve(false); return; }
      st.connected = false;
      settleJoin(false);
      if (st.joined || ev.reason === 'owner_unavailable') {
        st.leftReason = 'signalling_closed';
        const move = movable(ev);
        if (st.joined) endCall(false, move);
        if (move) {
          showMessage(`The relay's node went away (${ev.reason || `code ${ev.code}`}): joining again through another node.`, 'info');
          rejoin().catch((e) => showMessage(String(e.message || e)));
        } else {
          showMessage(describe('signalling_closed', ev.reason || `code ${ev.code}`));
        }
      }
      resolve(false);
    };
    ws.onmessage = (ev) => {
      let m;
      try { m = JSON.parse(ev.data); } catch (e) { return; }
      if (ws !== sock) return;
      chain = chain.then(() => (ws === sock ? handle(m, resolve) : undefined)).catch((e) => showMessage(`${m.type}: ${e.message || e}`));
    };
  });
}

async function handle(m, connected) {
  switch (m.type) {
    case 'capabilities':
      st.capabilities = m;
      renderSettings();
      connected(true);
      break;
    case 'joined': await onJoined(m); break;
    case 'offer': {
      setRemoteMsid(m.sdp);
      await pc.setRemoteDescription({ type: 'offer', sdp: m.sdp });
      await pc.setLocalDescription(await pc.createAnswer());
      send({ type: 'answer', sdp: pc.localDescription.sdp, revision: m.revision });
      break;
    }
    case 'participant_joined': {
      const p = m.participant;
      st.participants.set(p.participant, p);
      renderTiles();
      updateLayers().catch(() => {});
      if (st.scheme === 'mls') await groupSignal(m);
      else if (st.callMode === 'e2ee' && !kex) {
        await startKex(p);
        for (const [from, blob] of earlyBlobs.splice(0)) await onBlob(from, blob);
      }
      renderFeatures();
      break;
    }
    case 'participant_left': {
      if (m.participant === st.me) {
        st.leftReason = m.reason || 'removed';
        showMessage(m.reason === 'transferred' || m.reason === 'parked'
          ? `You left the call: ${m.reason}.` : `The relay removed you from the call (${m.reason}).`, 'info');
        endCall(false);
        break;
      }
      st.participants.delete(m.participant);
      updateLayers().catch(() => {});
      if (st.scheme === 'mls') await groupSignal(m);
      else if (kex && kex.peerId === m.participant) {
        // One-to-one: the keys were agreed with them. Whoever joins next (they, again,
        // through another node) agrees new ones and the code changes.
        kex = null;
        earlyBlobs = [];
        st.keyed = false;
        st.code = null;
        st.codeChanges += 1;
        if (worker) worker.postMessage({ type: 'forget' });
        renderCallBar();
      }
      const tile = document.querySelector(`.tile[data-participant="${CSS.escape(m.participant)}"]`);
      if (tile) tile.remove();
      showMessage(`${m.participant} left (${m.reason}).`, 'info');
      break;
    }
    case 'e2ee':
      if (!kex) { if (earlyBlobs.length < 16) earlyBlobs.push([m.from, m.blob]); } else await onBlob(m.from, m.blob);
      break;
    case 'call_mode_changed':
      if (m.call_mode !== 'e2ee') { relaySaysStandard(m.reason); break; }
      showMessage(`This call is now end-to-end encrypted: ${m.reason}`, 'info');
      if (!st.keyed) {
        st.callMode = m.call_mode;
        st.modeReason = m.reason;
        renderCallBar();
        renderFeatures();
        renderChat();
      }
      break;
    case 'mls_key_package':
    case 'mls_commit':
    case 'mls_commit_result':
    case 'mls_welcome':
    case 'mls_create':
      if (st.scheme === 'mls') await groupSignal(m);
      break;
    case 'chat': await onChat(m); break;
    case 'feature_result':
      st.features.push({ name: m.name, ok: m.ok, detail: m.detail || null });
      $('feature-result').textContent = `${m.name}: ${m.ok ? 'done' : 'not done'}${m.detail ? ` (${m.detail})` : ''}`;
      break;
    case 'invite':
      showMessage(`${m.by} invites you to call ${m.call} (${m.reason}).`, 'info');
      break;
    case 'error': onError(m); break;
    default: break;
  }
}

function onError(m) {
  const text = describe(m.code, m.message);
  if (m.code === 'feature_unavailable_in_e2ee_call' || m.code === 'unknown_feature') {
    st.features.push({ name: null, ok: false, code: m.code, detail: m.message });
    $('feature-result').textContent = text;
    return;
  }
  st.error = { code: m.code, message: m.message, text };
  showMessage(text);
  if (!st.joined) {
    stopMedia();
    settleJoin(false);
  }
}

// ---------- joining ----------

function parsePayloadTypes(sdp) {
  const out = {};
  for (const line of sdp.split(/\r?\n/)) {
    const r = /^a=rtpmap:(\d+) (opus|VP8)\//i.exec(line);
    if (r) out[r[2].toLowerCase() === 'opus' ? 'audio' : 'video'] = out[r[2].toLowerCase() === 'opus' ? 'audio' : 'video'] ?? Number(r[1]);
  }
  return out;
}

function parseMsid(sdp) {
  const bySsrc = {}, byMid = {};
  let mid = null, stream = null;
  const flush = () => { if (mid !== null && stream) byMid[mid] = stream; };
  for (const raw of sdp.split(/\r?\n/)) {
    const line = raw.trim();
    if (line.startsWith('m=')) { flush(); mid = null; stream = null; }
    else if (line.startsWith('a=mid:')) mid = line.slice(6);
    else if (line.startsWith('a=msid:')) stream = line.slice(7).split(' ')[0];
    else {
      const r = /^a=ssrc:(\d+) msid:(\S+)/.exec(line);
      if (r) { bySsrc[r[1]] = r[2]; if (!stream) stream = r[2]; }
    }
  }
  flush();
  return { bySsrc, byMid };
}

function setRemoteMsid(sdp) {
  remoteMsid = parseMsid(sdp);
  Object.assign(ssrcOwner, remoteMsid.bySsrc);
}

/** The key scheme asked for: `mls` (group call) from the settings or `scheme=mls`. */
function wantScheme() {
  const sel = $('scheme-select');
  if (sel) return sel.value;
  return params.get('scheme') === 'mls' ? 'mls' : 'x25519-commit-reveal';
}

function wantE2ee() {
  const opt = st.capabilities ? st.capabilities.e2ee_option : 'hidden';
  if (opt === 'required') return true;
  if (opt === 'hidden') return false;
  const t = $('e2ee-toggle');
  return !!(t && t.checked);
}

async function join() {
  if (!st.capabilities) return;
  const call = $('call').value.trim();
  st.error = null;
  $('message').hidden = true;
  const e2ee = wantE2ee();
  st.call = call;
  st.leftReason = null;
  if (!st.clearConsent) {
    st.askedE2ee = e2ee || (st.capabilities.e2ee_option === 'hidden' && params.get('e2ee') === '1');
    if (st.askedE2ee && !e2ee) {
      // e2ee=1 was asked for, and the relay says E2EE is not offered: ask before joining.
      askDowngrade("the relay does not offer end-to-end encryption to you (it says your organisation's policy hides it)");
      return;
    }
  }
  try {
    localStream = await navigator.mediaDevices.getUserMedia({ audio: true, video: { ...CAPTURE } });
  } catch (e) {
    st.error = { code: 'media_failed', message: String(e.message || e) };
    showMessage(describe('media_failed', e.message));
    return;
  }
  if (e2ee) {
    if (!('RTCRtpScriptTransform' in window)) {
      showMessage('This browser has no RTCRtpScriptTransform: it cannot join end-to-end encrypted calls.');
      stopMedia();
      return;
    }
    if (!worker) startWorker();
  }
  pc = new RTCPeerConnection({ iceServers: [] });
  st.videoSender = null;
  st.layersOn = null;
  for (const t of localStream.getTracks()) {
    const tr = pc.addTransceiver(t, { direction: 'sendrecv', streams: [localStream] });
    if (e2ee) attachSendTransform(tr.sender, t.kind);
    if (t.kind === 'video') st.videoSender = tr.sender;
  }
  pc.ontrack = onTrack;
  pc.onconnectionstatechange = () => {
    if (pc && pc.connectionState === 'failed') showMessage('The media connection to the relay failed.');
  };
  const offer = await pc.createOffer();
  st.simulcast = false;
  if (params.get('simulcast') !== '0') {
    // Chromium encodes a track in SSRC layers when its own offer groups them; a browser
    // that refuses the grouped offer sends one layer, as before.
    try {
      await pc.setLocalDescription({ type: 'offer', sdp: withSimulcast(offer.sdp) });
      st.simulcast = true;
    } catch (e) { /* not supported here */ }
  }
  if (!st.simulcast) await pc.setLocalDescription(offer);
  // One layer until the call has more than two: the lower one sends nothing, not even its
  // first frames before the relay's answer.
  await updateLayers().catch(() => {});
  if (pc.iceGatheringState !== 'complete') {
    await new Promise((resolve) => {
      const t = setTimeout(resolve, 5000);
      pc.addEventListener('icegatheringstatechange', () => { if (pc.iceGatheringState === 'complete') { clearTimeout(t); resolve(); } });
    });
  }
  st.payloadTypes = parsePayloadTypes(pc.localDescription.sdp);
  addLocalTile();
  const join = { type: 'join', call, e2ee_enabled: e2ee, offer_sdp: pc.localDescription.sdp };
  if (e2ee && wantScheme() === 'mls') join.e2ee_scheme = 'mls';
  send(join);
}

async function onJoined(m) {
  st.me = m.participant;
  st.callMode = m.call_mode;
  st.modeReason = m.mode_reason || null;
  // Known before the call view renders, so a group call's features say why in its terms
  // (st.scheme, which routes signalling to the group, is set once the worker has it).
  st.groupCall = m.call_mode === 'e2ee' && m.e2ee_scheme === 'mls';
  for (const p of m.participants || []) st.participants.set(p.participant, p);
  setRemoteMsid(m.answer_sdp);
  await pc.setRemoteDescription({ type: 'answer', sdp: m.answer_sdp });
  updateLayers().catch(() => {});
  st.joined = true;
  settleJoin(true);
  st.joinedAt = performance.now();
  st.joinedAtWall = performance.timeOrigin + st.joinedAt;
  st.firstVideoAt = {};
  $('setup').hidden = true;
  $('call-view').hidden = false;
  $('callbar').hidden = false;
  $('call-name').textContent = st.call;
  if (st.modeReason) showMessage(st.modeReason, 'info');
  renderCallBar();
  renderTiles();
  renderFeatures();
  renderChat();
  timers.push(setInterval(tick, 500));
  if (st.callMode !== 'e2ee' && !clearAllowed()) relaySaysStandard(st.modeReason || 'the relay says this is a standard call');
  if (st.callMode === 'e2ee' && m.e2ee_scheme === 'mls') {
    st.scheme = 'mls';
    // The worker holds the group (keys never come back here); this thread relays.
    const r = await rpc({
      type: 'mls_start', me: st.me, call: st.call, user: st.capabilities ? st.capabilities.user : '',
      participants: (m.participants || []).map((p) => ({ participant: p.participant, user: p.user })),
    });
    afterGroupReply(r);
    return;
  }
  const first = [...st.participants.values()][0];
  if (st.callMode === 'e2ee' && first) {
    await startKex(first);
    for (const [from, blob] of earlyBlobs.splice(0)) await onBlob(from, blob);
  }
}

function onTrack(ev) {
  attachRecvTransform(ev.receiver, ev.track.kind);
  const mid = ev.transceiver ? ev.transceiver.mid : null;
  if (ev.track.kind === 'video' && mid != null && st.maxHeight != null) {
    send({ type: 'max_resolution', mid, height: st.maxHeight });
  }
  const who = (mid != null && remoteMsid.byMid[mid]) || (ev.streams[0] && ev.streams[0].id) || 'unknown';
  const tile = ensureTile(who);
  const el = tile.querySelector(ev.track.kind === 'video' ? 'video' : 'audio');
  const stream = el.srcObject instanceof MediaStream ? el.srcObject : new MediaStream();
  for (const t of stream.getTracks()) if (t.kind === ev.track.kind) stream.removeTrack(t);
  stream.addTrack(ev.track);
  el.srcObject = stream;
  el.play().catch(() => {});
}

// ---------- key agreement ----------

async function startKex(peer) {
  if (peer.role && peer.role.startsWith('bot:')) {
    showMessage(`Not sharing end-to-end keys with ${peer.participant} (role ${peer.role}).`);
    return;
  }
  kex = await KeyAgreement.create(st.call, st.me, peer.participant);
  const first = await kex.start();
  if (first) send({ type: 'e2ee', to: peer.participant, blob: first });
}

async function onBlob(from, blob) {
  if (!kex || from !== kex.peerId) return;
  try {
    const reply = await kex.handle(blob);
    if (reply) send({ type: 'e2ee', to: from, blob: reply });
  } catch (e) {
    st.kexError = e.code || 'error';
    showMessage(`End-to-end key agreement failed: ${e.message}. The call stays silent rather than unencrypted.`);
    return;
  }
  if (kex.keys && !st.keyed) {
    const k = kex.keys;
    st.code = k.verificationCode;
    // The keys move to the worker (the buffers are transferred: no copy stays here).
    worker.postMessage({ type: 'keys', sendKey: k.sendKey, sendKid: k.sendKid, recvKey: k.recvKey, recvKid: k.recvKid },
      [k.sendKey.buffer, k.recvKey.buffer]);
    kex.keys = { verificationCode: k.verificationCode };
    st.keyed = true;
    if (st.pendingDowngrade) {
      // Keys were agreed after all: the call is end-to-end encrypted, whatever the relay said.
      st.pendingDowngrade = null;
      st.callMode = 'e2ee';
      renderDowngrade();
      showMessage('End-to-end keys were agreed: this call stays end-to-end encrypted.', 'info');
      renderFeatures();
    }
    renderCallBar();
    renderChat();
  }
}

// ---------- group E2EE (MLS, in the worker) ----------

/** Hand a relay message to the worker's group session; send what it answers. */
async function groupSignal(m) {
  if (!worker) return;
  afterGroupReply(await rpc({ type: 'mls_signal', msg: m }));
}

function afterGroupReply(r) {
  if (r.error) showMessage(`Group end-to-end keys: ${r.error}`);
  for (const out of r.out || []) send(out);
}

/** The worker's group summary: epoch, code, members, refusals (never keys). */
function onGroupSummary(g) {
  const before = st.group;
  st.group = g;
  if (g.refused && !(before && before.refused)) {
    showMessage(`This page left the end-to-end group: a change to it was refused (${g.refused}). The call stays silent rather than keyed to someone unseen.`);
  }
  if (g.keyed && g.code) {
    if (st.code && st.code !== g.code) {
      st.codeChanges++;
      showMessage(`The verification code changed: people joined or left (epoch ${g.epoch}). Compare the new code.`, 'info');
    }
    st.code = g.code;
    if (!st.keyed) {
      st.keyed = true;
      renderChat();
    }
  }
  renderCallBar();
}

// ---------- no downgrade without consent ----------

/** Whether this page may send media or chat in the clear: it never asked for E2EE, or the
 * person answered "Continue unencrypted". */
function clearAllowed() {
  return !st.askedE2ee || st.clearConsent;
}

/** The relay says the call is (or will be) standard, with `reason` (its words, untrusted).
 * A page that asked for E2EE asks the person; once keyed, the claim is refused outright. */
function relaySaysStandard(reason) {
  reason = String(reason || 'the relay gave no reason');
  if (st.keyed) {
    // Two members have agreed keys: an honest relay never downgrades such a call. Stay in
    // the call, keep sealing with the agreed keys (the worker refuses passthrough once
    // keyed), and say the relay tried.
    st.downgradesRefused++;
    showMessage(`The relay said this call is now a standard call (${reason}). It already has end-to-end keys, so it stays end-to-end encrypted; the relay cannot read it.`);
    return;
  }
  if (!clearAllowed()) {
    // Until the answer: the worker stays in E2EE mode (no keys: every frame is dropped), chat
    // is closed, features stay off. A key agreement already running goes on.
    st.callMode = 'standard';
    st.modeReason = reason;
    askDowngrade(reason);
    return;
  }
  showMessage(`This call is now a standard call: ${reason}`, 'info');
  st.callMode = 'standard';
  st.modeReason = reason;
  kex = null;
  if (worker) worker.postMessage({ type: 'mode', mode: 'passthrough' });
  renderCallBar();
  renderFeatures();
  renderChat();
}

function askDowngrade(reason) {
  st.pendingDowngrade = { reason };
  renderDowngrade();
  if (st.joined) {
    renderCallBar();
    renderFeatures();
    renderChat();
  }
}

/** The question's words: the relay's reason without its "standard call: " prefix. */
function questionText(reason) {
  const why = reason.replace(/^standard call:\s*/i, '').replace(/[.\s]+$/, '');
  return `This call can't be end-to-end encrypted: ${why}. Continue unencrypted, or leave?`;
}

function renderDowngrade() {
  const box = $('downgrade');
  const p = st.pendingDowngrade;
  box.hidden = !p;
  if (!p) return;
  $('downgrade-text').textContent = questionText(p.reason);
  $('downgrade-leave').focus();
}

/** The person's answer. true: go on as a standard call (media and chat in the clear, the
 * badge says so); false: leave (`leave` sent, the peer connection closed). Returns whether a
 * question was pending. */
function answerDowngrade(yes) {
  const p = st.pendingDowngrade;
  if (!p) return false;
  st.pendingDowngrade = null;
  renderDowngrade();
  if (!yes) {
    st.leftReason = 'downgrade_refused';
    const was = st.joined;
    if (was) endCall(true); else stopMedia();
    showMessage(`You ${was ? 'left the call' : 'did not join'}: it could not be end-to-end encrypted (${p.reason}).`, 'info');
    return true;
  }
  st.clearConsent = true;
  if (!st.joined) {
    join().catch((err) => showMessage(String(err.message || err)));
    return true;
  }
  st.callMode = 'standard';
  st.modeReason = p.reason;
  kex = null;
  earlyBlobs = [];
  if (worker) worker.postMessage({ type: 'mode', mode: 'passthrough' });
  showMessage(`You chose to continue unencrypted: this is a standard call (${p.reason}). The relay can see and hear it.`, 'info');
  renderCallBar();
  renderFeatures();
  renderChat();
  return true;
}

// ---------- chat ----------

async function onChat(m) {
  let text = m.body, sealed = false;
  if (m.body.startsWith('sframe:')) {
    if (!worker) text = '<sealed chat, no keys>';
    else {
      const r = await rpc({ type: 'open_chat', body: m.body });
      text = r.error ? `<${r.error}>` : r.text;
      sealed = !r.error;
    }
  }
  st.chat.push({ from: m.from, text, sealed });
  const li = document.createElement('li');
  const who = st.participants.get(m.from);
  li.textContent = `${who ? who.user : m.from}: ${text}${sealed ? '' : st.callMode === 'e2ee' || !clearAllowed() ? ' (not encrypted)' : ''}`;
  $('chat-log').appendChild(li);
}

async function sendChat(text) {
  if (!text) return;
  let body = text;
  // Sealed on an E2EE call, and on any call this page asked to encrypt until the person
  // agreed to go on unencrypted: no keys then means no chat, never clear chat.
  const seal = st.callMode === 'e2ee' || !clearAllowed();
  if (seal) {
    if (!st.keyed) return;
    const r = await rpc({ type: 'seal_chat', text });
    if (r.error) { showMessage(`Chat not sent: ${r.error}`); return; }
    body = r.body;
  }
  send({ type: 'chat', body });
  st.chat.push({ from: st.me, text, sealed: seal, mine: true });
  const li = document.createElement('li');
  li.textContent = `me: ${text}`;
  $('chat-log').appendChild(li);
}

// ---------- UI ----------

function renderSettings() {
  const opt = st.capabilities.e2ee_option;
  $('settings').hidden = false;
  const box = $('e2ee-setting');
  box.replaceChildren();
  const note = $('e2ee-hidden-note');
  note.hidden = true;
  if (opt === 'hidden') {
    note.textContent = "End-to-end encryption is not offered to you (your organisation's policy).";
    note.hidden = false;
    return;
  }
  const label = document.createElement('label');
  const toggle = document.createElement('input');
  toggle.type = 'checkbox';
  toggle.id = 'e2ee-toggle';
  label.append(toggle, ' End-to-end encrypted calls');
  const p = document.createElement('p');
  p.className = 'note';
  if (opt === 'required') {
    toggle.checked = true;
    toggle.disabled = true;
    p.textContent = "Required by your organisation's policy: every call of yours is end-to-end encrypted.";
  } else {
    toggle.checked = params.get('e2ee') === '1';
    p.textContent = 'Media and chat are encrypted on this device; the relay forwards what it cannot read. Record, captions, transcription, transfers, merge and park are then unavailable.';
  }
  const schemeLabel = document.createElement('label');
  const select = document.createElement('select');
  select.id = 'scheme-select';
  for (const [value, text] of [['x25519-commit-reveal', 'One-to-one (X25519)'], ['mls', 'Group (MLS)']]) {
    const o = document.createElement('option');
    o.value = value;
    o.textContent = text;
    select.appendChild(o);
  }
  select.value = params.get('scheme') === 'mls' ? 'mls' : 'x25519-commit-reveal';
  schemeLabel.append('Encrypted call type ', select);
  box.append(label, p, schemeLabel);
}

function renderCallBar() {
  const b = $('mode-badge');
  if (st.pendingDowngrade) {
    b.textContent = 'paused: not encrypted';
    b.className = 'badge paused';
  } else {
    b.textContent = st.callMode === 'e2ee' ? 'end-to-end encrypted' : 'standard call';
    b.className = `badge ${st.callMode}`;
  }
  const lock = $('lock');
  lock.hidden = st.callMode !== 'e2ee';
  lock.title = st.keyed ? 'End-to-end encrypted: click to show the verification code' : 'Waiting for end-to-end keys';
  lock.classList.toggle('pending', !st.keyed);
  $('lock-shackle').setAttribute('d', st.keyed ? 'M8 10V7a4 4 0 0 1 8 0v3' : 'M8 10V7a4 4 0 0 1 8 0');
  $('lock-label').textContent = st.keyed ? 'end-to-end encrypted' : 'waiting for end-to-end keys';
  $('code').textContent = st.code || 'waiting for the other participant';
  const list = $('group-members');
  if (list) {
    const g = st.scheme === 'mls' ? st.group : null;
    list.hidden = !g;
    list.textContent = g ? `Epoch ${g.epoch}; members: ${g.members.join(', ')}` : '';
  }
}

function tick() {
  if (st.joinedAt != null) {
    const s = Math.floor((performance.now() - st.joinedAt) / 1000);
    $('duration').textContent = `${String(Math.floor(s / 60)).padStart(2, '0')}:${String(s % 60).padStart(2, '0')}`;
  }
  refreshStats().catch(() => {});
}

async function refreshStats() {
  if (worker) rpc({ type: 'stats' });
  if (!pc) return;
  const stats = await pc.getStats();
  const inbound = [];
  const outbound = [];
  stats.forEach((s) => {
    if (s.type === 'outbound-rtp') outbound.push({ kind: s.kind, ssrc: s.ssrc, packetsSent: s.packetsSent || 0, bytesSent: s.bytesSent || 0, nackCount: s.nackCount || 0, retransmittedPacketsSent: s.retransmittedPacketsSent || 0, pliCount: s.pliCount || 0, frameHeight: s.frameHeight || 0, active: s.active !== false });
    if (s.type !== 'inbound-rtp') return;
    const participant = ssrcOwner[String(s.ssrc)] || (s.mid != null ? remoteMsid.byMid[s.mid] : null) || null;
    const e = { participant, kind: s.kind, ssrc: s.ssrc, mid: s.mid ?? null, framesDecoded: s.framesDecoded || 0, packetsReceived: s.packetsReceived || 0 };
    if (s.kind === 'audio') {
      e.totalSamplesReceived = s.totalSamplesReceived || 0;
      e.concealedSamples = s.concealedSamples || 0;
      e.totalAudioEnergy = s.totalAudioEnergy || 0;
      e.totalSamplesDuration = s.totalSamplesDuration || 0;
      e.audioLevel = s.audioLevel || 0;
    } else {
      // How the picture held up: loss, its repair (NACK, keyframe requests) and freezes.
      for (const k of ['packetsLost', 'nackCount', 'pliCount', 'firCount', 'keyFramesDecoded', 'framesDropped', 'freezeCount', 'totalFreezesDuration', 'retransmittedPacketsReceived', 'frameHeight', 'frameWidth']) e[k] = s[k] || 0;
      if (participant && e.framesDecoded > 0) st.firstVideoAt[participant] ??= performance.timeOrigin + performance.now();
    }
    inbound.push(e);
  });
  st.inbound = inbound;
  st.outbound = outbound;
}

// ---------- simulcast ----------

/** What the camera is asked for. libwebrtc sends as many SSRC layers as the picture is
 * large enough for (two from 640x480, one from 320x240). The capture does not change during
 * a call: a camera another page or tab holds keeps the format it was opened with. */
const CAPTURE = { width: 640, height: 480, frameRate: 30 };
/** One layer (a call of two) is sent at 320x240, as a call of two always was. */
const ONE_LAYER_SCALE = 2;

/** The offer with its video line in two SSRC layers (a=ssrc-group:SIM, lowest first, each
 * with its RTX SSRC): the browser encodes the track twice and the relay sends each receiver
 * one layer. The new SSRCs carry the first's cname and msid. */
function withSimulcast(sdp) {
  const lines = sdp.split('\r\n');
  const start = lines.findIndex((l) => l.startsWith('m=video'));
  if (start < 0) return sdp;
  let end = lines.findIndex((l, i) => i > start && l.startsWith('m='));
  if (end < 0) end = lines.length;
  const section = lines.slice(start, end);
  const ssrcOf = (l) => (l.match(/^a=ssrc:(\d+) /) || [])[1];
  const low = section.map(ssrcOf).find(Boolean);
  if (!low || section.some((l) => l.startsWith('a=ssrc-group:SIM'))) return sdp;
  const fid = section.find((l) => l.startsWith(`a=ssrc-group:FID ${low} `));
  const used = new Set(section.map(ssrcOf).filter(Boolean));
  const fresh = () => {
    let x;
    do { x = String(crypto.getRandomValues(new Uint32Array(1))[0]); } while (x === '0' || used.has(x));
    used.add(x);
    return x;
  };
  const high = fresh();
  const rtxHigh = fid ? fresh() : null;
  const attrs = section.filter((l) => l.startsWith(`a=ssrc:${low} `)).map((l) => l.slice(`a=ssrc:${low} `.length));
  const added = [`a=ssrc-group:SIM ${low} ${high}`];
  if (rtxHigh) added.push(`a=ssrc-group:FID ${high} ${rtxHigh}`);
  for (const x of rtxHigh ? [high, rtxHigh] : [high]) for (const a of attrs) added.push(`a=ssrc:${x} ${a}`);
  const last = section.map((l) => l.startsWith('a=ssrc')).lastIndexOf(true);
  lines.splice(start + last + 1, 0, ...added);
  return lines.join('\r\n');
}

/** Two layers in a call of more than two (320x240 and 640x480: each receiver gets the one
 * it asks for); in a call of two, one (at ONE_LAYER_SCALE). */
function updateLayers() {
  // One change at a time, so an earlier one never lands after a later one.
  layersChain = layersChain.then(applyLayers, applyLayers);
  return layersChain;
}
let layersChain = Promise.resolve();

/** The low layer is what a receiver on a narrow downlink is sent: capped, as LiveKit's
 * and Teams' low layers are, so two of them and the call's audio fit 600 kbit/s. */
const LOW_LAYER_BPS = 150_000;

async function applyLayers() {
  const s = st.videoSender;
  if (!s) return;
  const want = st.simulcast && st.participants.size + 1 > 2;
  if (st.layersOn === want) return;
  st.layersOn = want;
  const p = s.getParameters();
  if (!p.encodings || !p.encodings.length) return;
  if (!st.simulcast || p.encodings.length < 2) {
    p.encodings[0].scaleResolutionDownBy = ONE_LAYER_SCALE;
    await s.setParameters(p);
    return;
  }
  p.encodings[0].scaleResolutionDownBy = 2;
  p.encodings[0].maxBitrate = LOW_LAYER_BPS;
  p.encodings[0].active = want;
  p.encodings[1].scaleResolutionDownBy = want ? 1 : ONE_LAYER_SCALE;
  p.encodings[1].active = true;
  await s.setParameters(p);
}

/** Ask the relay for pictures at most `height` tall of every remote video track, now and
 * as tracks come (null: no limit). */
function setMaxResolution(height) {
  st.maxHeight = height == null ? null : Number(height);
  if (!pc) return;
  for (const t of pc.getTransceivers()) {
    if (t.mid == null || t.receiver.track.kind !== 'video' || !remoteMsid.byMid[t.mid]) continue;
    const m = { type: 'max_resolution', mid: t.mid };
    if (st.maxHeight != null) m.height = st.maxHeight;
    send(m);
  }
}

function ensureTile(participant) {
  let tile = document.querySelector(`.tile[data-participant="${CSS.escape(participant)}"]`);
  if (tile) return tile;
  tile = document.createElement('div');
  tile.className = 'tile';
  tile.dataset.participant = participant;
  const v = document.createElement('video');
  v.autoplay = true; v.playsInline = true; v.muted = true;
  const a = document.createElement('audio');
  a.autoplay = true;
  const name = document.createElement('span');
  name.className = 'name';
  const p = st.participants.get(participant);
  name.textContent = p ? p.user : participant;
  tile.append(v, a, name);
  $('tiles').appendChild(tile);
  return tile;
}

function addLocalTile() {
  const tile = ensureTile('local');
  tile.querySelector('.name').textContent = 'you';
  const v = tile.querySelector('video');
  v.srcObject = localStream;
  v.play().catch(() => {});
}

function renderTiles() {
  for (const [id, p] of st.participants) ensureTile(id).querySelector('.name').textContent = p.user;
}

function renderFeatures() {
  const box = $('feature-buttons');
  box.replaceChildren();
  // Until the person agrees to an unencrypted call, features stay as on an E2EE call.
  const e2ee = st.callMode === 'e2ee' || !clearAllowed();
  $('features-note').textContent = st.pendingDowngrade
    ? 'Unavailable until you answer whether to continue unencrypted.'
    : e2ee
      ? (st.groupCall
        ? 'Unavailable on an end-to-end encrypted group call: each needs the media in the clear or someone the members did not add themselves.'
        : 'Unavailable on an end-to-end encrypted call: each needs the media in the clear or a third party in a one-to-one call.')
      : 'Carried out by the relay\'s call control. Add participant, transfer and consult transfer take a user; merge takes a call id.';
  const arg = document.createElement('input');
  arg.id = 'feature-arg';
  arg.placeholder = 'user or call id';
  arg.disabled = e2ee;
  for (const [name, label, needs] of FEATURES) {
    const b = document.createElement('button');
    b.type = 'button';
    b.dataset.feature = name;
    b.textContent = label;
    const row = document.createElement('div');
    row.className = 'feature';
    row.appendChild(b);
    if (e2ee) {
      const reason = (st.groupCall ? E2EE_GROUP_FEATURE_REASON : E2EE_FEATURE_REASON)[name];
      b.disabled = true;
      b.title = reason;
      const why = document.createElement('span');
      why.className = 'why';
      why.id = `why-${name}`;
      why.textContent = reason;
      b.setAttribute('aria-describedby', why.id);
      row.appendChild(why);
    } else {
      b.title = needs ? `${label} (needs a ${needs})` : label;
      b.onclick = () => {
        const v = arg.value.trim();
        if (needs && !v) { $('feature-result').textContent = `${label} needs a ${needs}.`; return; }
        send(needs ? { type: 'feature', name, arg: v } : { type: 'feature', name });
        $('feature-result').textContent = `${label}: asked the relay...`;
      };
    }
    box.appendChild(row);
  }
  box.appendChild(arg);
}

function renderChat() {
  const e2ee = st.callMode === 'e2ee' || !clearAllowed();
  $('chat-e2ee').textContent = st.pendingDowngrade && !st.keyed
    ? 'Chat is closed until you answer whether to continue unencrypted.'
    : e2ee
      ? (st.keyed ? 'Chat is end-to-end encrypted (sealed with the call\'s keys).' : 'Chat opens once the call is keyed.')
      : 'Chat is not end-to-end encrypted: the relay can read it.';
  const enabled = st.joined && (e2ee ? st.keyed : clearAllowed());
  $('chat-input').disabled = !enabled;
  $('chat-send').disabled = !enabled;
}

// `keepWorker`: the page joins again through another node, whose origin is not the one the
// worker's scripts came from (and the node that served them may be gone): the worker stays,
// emptied of the last session.
function stopMedia(keepWorker = false) {
  if (localStream) localStream.getTracks().forEach((t) => t.stop());
  localStream = null;
  if (pc) try { pc.close(); } catch (e) { /* closing */ }
  pc = null;
  if (worker && keepWorker) {
    worker.postMessage({ type: 'reset' });
    st.workerStats = { frames_encrypted: 0, frames_decrypted: 0, decrypt_failures: 0 };
  } else {
    if (worker) worker.terminate();
    worker = null;
  }
  document.querySelectorAll('.tile').forEach((t) => t.remove());
}

function endCall(sendLeave, keepWorker = false) {
  if (sendLeave) send({ type: 'leave' });
  st.pendingDowngrade = null;
  st.clearConsent = false;
  renderDowngrade();
  for (const t of timers) clearInterval(t);
  timers = [];
  stopMedia(keepWorker);
  kex = null;
  earlyBlobs = [];
  Object.assign(st, { joined: false, keyed: false, code: null, callMode: null, me: null, joinedAt: null, joinedAtWall: null, scheme: null, group: null, groupCall: false });
  st.participants.clear();
  $('call-view').hidden = true;
  $('callbar').hidden = true;
  $('code-panel').hidden = true;
  $('setup').hidden = false;
}

async function devToken() {
  const user = ($('name').value || '').trim();
  const call = $('call').value.trim();
  if (!user) { showMessage('Type your name first.'); return null; }
  const r = await fetch('/dev/token', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ user, call }) });
  const body = await r.json().catch(() => ({}));
  if (!r.ok) {
    st.error = { code: body.code || `http_${r.status}`, message: body.message || '' };
    showMessage(describe(st.error.code, st.error.message));
    return null;
  }
  $('token').value = body.token;
  return body.token;
}

function sampleVideo(participant) {
  const tile = document.querySelector(`.tile[data-participant="${CSS.escape(participant)}"]`);
  const v = tile && tile.querySelector('video');
  if (!v || !v.videoWidth) return null;
  const c = document.createElement('canvas');
  c.width = 64; c.height = 48;
  const g = c.getContext('2d');
  g.drawImage(v, 0, 0, c.width, c.height);
  const px = g.getImageData(0, 0, c.width, c.height).data;
  let sum = 0, sq = 0, n = 0;
  const distinct = new Set();
  for (let i = 0; i < px.length; i += 4) {
    const y = 0.299 * px[i] + 0.587 * px[i + 1] + 0.114 * px[i + 2];
    sum += y; sq += y * y; n++;
    distinct.add((px[i] >> 3) << 10 | (px[i + 1] >> 3) << 5 | (px[i + 2] >> 3));
  }
  const mean = sum / n;
  return { width: v.videoWidth, height: v.videoHeight, mean, stddev: Math.sqrt(Math.max(0, sq / n - mean * mean)), distinctColours: distinct.size };
}

/** Wall-clock times (ms) by key, as ms since this page's join (the relay's `joined`);
 * nothing before the join. */
function sinceJoin(at) {
  const out = {};
  if (st.joinedAtWall == null) return out;
  for (const [k, t] of Object.entries(at || {})) out[k] = Math.max(0, t - st.joinedAtWall);
  return out;
}

/** How soon after its join this page opened each other member's frames, and `keyed_ms`:
 * when it had opened every current member's, or null. */
function groupTimes(w) {
  const first = sinceJoin(w.first_decrypted_at);
  if (st.joinedAtWall == null) return { first_decrypted_ms: first, keyed_ms: null };
  const others = st.group ? st.group.participants.filter((p) => p !== st.me) : [];
  const keyed = others.length && others.every((p) => p in first) ? Math.max(...others.map((p) => first[p])) : null;
  return { first_decrypted_ms: first, keyed_ms: keyed };
}

/** How soon after its join this page opened the first key frame of each participant's
 * video (to the millisecond): when its decoder could start. The worker knows streams by
 * SSRC; the stats name their participant. */
function keyFrameTimes(w) {
  const first = {};
  for (const [ssrc, ms] of Object.entries(sinceJoin(w.first_key_at))) {
    const who = (st.inbound.find((i) => String(i.ssrc) === ssrc) || {}).participant || ssrcOwner[ssrc];
    if (who) first[who] = Math.min(first[who] ?? Infinity, ms);
  }
  return first;
}

window.blindrelay = {
  state() {
    const w = st.workerStats;
    return {
      joined: st.joined,
      call_mode: st.callMode,
      mode_reason: st.modeReason,
      e2ee: st.keyed,
      e2ee_option: st.capabilities ? st.capabilities.e2ee_option : null,
      e2ee_toggle_present: !!$('e2ee-toggle') && !$('settings').hidden,
      verification_code: st.code,
      e2ee_scheme: st.scheme || (st.callMode === 'e2ee' ? 'x25519-commit-reveal' : null),
      epoch: st.group ? st.group.epoch : null,
      group_members: st.group ? [...st.group.members] : [],
      group_participants: st.group ? [...st.group.participants] : [],
      frames_decrypted_from: { ...(w.frames_decrypted_from || {}) },
      key_packages_refused: st.group ? st.group.key_packages_refused : 0,
      previous_epoch_keys: st.group ? st.group.previous_epoch_keys : 0,
      group_refused: st.group ? st.group.refused : null,
      code_changes: st.codeChanges,
      ...groupTimes(w),
      // The first decoded frame of each participant's video, seen at the 500 ms stats tick.
      first_video_ms: sinceJoin(st.firstVideoAt),
      first_keyframe_ms: keyFrameTimes(w),
      joined_unix_ms: st.joinedAtWall,
      participant: st.me,
      participants: [...st.participants.keys()],
      frames_encrypted: w.frames_encrypted,
      frames_decrypted: w.frames_decrypted,
      decrypt_failures: w.decrypt_failures,
      frames_replayed: w.frames_replayed || 0,
      last_decrypt_error: w.last_error || null,
      dropped_before_keys: w.dropped_before_keys || 0,
      empty_frames: w.empty_frames || 0,
      inbound: st.inbound.map((i) => ({ ...i })),
      outbound: st.outbound.map((o) => ({ ...o })),
      simulcast: !!st.simulcast,
      capture_height: localStream && localStream.getVideoTracks()[0] ? localStream.getVideoTracks()[0].getSettings().height || null : null,
      layers_on: !!st.layersOn,
      max_height: st.maxHeight ?? null,
      payload_types: { ...st.payloadTypes },
      error: st.error,
      kex_error: st.kexError,
      pending_downgrade: st.pendingDowngrade ? { reason: st.pendingDowngrade.reason } : null,
      left_reason: st.leftReason,
      reconnects: st.reconnects,
      node_url: st.nodeUrl,
      nodes: [...st.nodes],
      asked_e2ee: st.askedE2ee,
      clear_consent: st.clearConsent,
      downgrades_refused: st.downgradesRefused,
      messages: st.messages.map((m) => m.text),
      chat: st.chat.map((c) => ({ ...c })),
      features: st.features.map((f) => ({ ...f })),
    };
  },
  sampleVideo,
  /** Answer the downgrade question: true continues as a standard call, false leaves. */
  answerDowngrade(yes) { return answerDowngrade(!!yes); },
  /** Pictures at most `height` tall of every remote video track (null: no limit). */
  maxResolution(height) { setMaxResolution(height); return true; },
};

// ---------- wiring ----------

// A development token or a pasted one signs in at once, so the settings show.
$('dev-token').onclick = async () => { const t = await devToken(); if (t) await connect(t); };
$('token').onchange = () => { const t = $('token').value.trim(); if (t) connect(t); };
$('connect').onclick = async () => {
  const token = $('token').value.trim();
  if (!token) { showMessage('Paste a token, or get a development token.'); return; }
  await connect(token);
};
$('join-form').onsubmit = (e) => { e.preventDefault(); join().catch((err) => showMessage(String(err.message || err))); };
$('leave').onclick = () => { st.leftReason = 'left'; endCall(true); };
$('downgrade-continue').onclick = () => answerDowngrade(true);
$('downgrade-leave').onclick = () => answerDowngrade(false);
$('lock').onclick = () => {
  const panel = $('code-panel');
  panel.hidden = !panel.hidden;
  $('lock').setAttribute('aria-expanded', String(!panel.hidden));
};
$('chat-form').onsubmit = (e) => {
  e.preventDefault();
  const input = $('chat-input');
  const text = input.value;
  input.value = '';
  sendChat(text).catch((err) => showMessage(String(err.message || err)));
};

(async () => {
  if (params.get('maxres')) st.maxHeight = Number(params.get('maxres'));
  if (params.get('call')) $('call').value = params.get('call');
  if (params.get('token')) $('token').value = params.get('token');
  if (params.get('name')) $('name').value = params.get('name');
  const nodes = loadNodes();
  if (params.get('autojoin') !== '1') return;
  let token = $('token').value.trim();
  if (!token && $('name').value) token = await devToken();
  if (!token) return;
  await nodes;
  if (await connect(token)) await join();
})().catch((e) => showMessage(String(e.message || e)));
