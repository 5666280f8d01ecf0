// blindrelay web client: signalling, WebRTC, end-to-end encryption (SFrame in an
// RTCRtpScriptTransform worker, keys from the same X25519 commit-reveal as e2ee-client), UI.
//
// Automation: window.blindrelay.state() returns the call's state (see README, "The web
// client"); URL parameters call, token, e2ee=1, autojoin=1 (and name= for a development
// token) join without clicks.
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
  e2ee_scheme_mismatch: 'This encrypted call uses another key scheme (a group call keyed with MLS, or a one-to-one call): this page joins one-to-one calls only.',
  e2ee_call_refuses_bots: 'End-to-end encrypted calls admit no recording, caption or transcription bots.',
  feature_unavailable_in_e2ee_call: 'This feature is unavailable on an end-to-end encrypted call.',
  unknown_feature: 'The relay does not offer this feature.',
  shutting_down: 'The relay is shutting down.',
  no_common_codec: "This browser offers none of the call's codecs (Opus, VP8).",
  relay_full: 'The relay is at capacity: try again later.',
  rate_limited: 'Too many requests: wait a moment and try again.',
  hello_timeout: 'The relay closed the connection: the page did not sign in in time.',
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
const FEATURES = [
  ['record', 'Record'], ['live_captions', 'Live captions'], ['transcription', 'Transcription'],
  ['add_participant', 'Add participant', 'user'], ['transfer', 'Transfer', 'user'],
  ['consult_transfer', 'Consult transfer', 'user'], ['merge', 'Merge', 'call id'], ['park', 'Park'],
];

const st = {
  connected: false, capabilities: null, joined: false, callMode: null, modeReason: null, me: null, call: null,
  keyed: false, code: null, participants: new Map(), error: null, messages: [], chat: [], features: [],
  workerStats: { frames_encrypted: 0, frames_decrypted: 0, decrypt_failures: 0 }, inbound: [],
  payloadTypes: {}, kexError: null, joinedAt: null,
};
let ws = null, pc = null, localStream = null, worker = null, kex = null, earlyBlobs = [];
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

function connect(token) {
  return new Promise((resolve) => {
    if (ws) try { ws.close(); } catch (e) { /* closing anyway */ }
    st.capabilities = null;
    const url = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/v1/signal`;
    ws = new WebSocket(url);
    ws.onopen = () => { st.connected = true; send({ type: 'hello', token }); };
    ws.onclose = (ev) => {
      st.connected = false;
      if (st.joined) { showMessage(describe('signalling_closed', ev.reason || `code ${ev.code}`)); endCall(false); }
      resolve(false);
    };
    ws.onmessage = (ev) => {
      let m;
      try { m = JSON.parse(ev.data); } catch (e) { return; }
      chain = chain.then(() => handle(m, resolve)).catch((e) => showMessage(`${m.type}: ${e.message || e}`));
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
      if (st.callMode === 'e2ee' && !kex) {
        await startKex(p);
        for (const [from, blob] of earlyBlobs.splice(0)) await onBlob(from, blob);
      }
      renderFeatures();
      break;
    }
    case 'participant_left': {
      if (m.participant === st.me) {
        showMessage(m.reason === 'transferred' || m.reason === 'parked'
          ? `You left the call: ${m.reason}.` : `The relay removed you from the call (${m.reason}).`, 'info');
        endCall(false);
        break;
      }
      st.participants.delete(m.participant);
      const tile = document.querySelector(`.tile[data-participant="${CSS.escape(m.participant)}"]`);
      if (tile) tile.remove();
      showMessage(`${m.participant} left (${m.reason}).`, 'info');
      break;
    }
    case 'e2ee':
      if (!kex) { if (earlyBlobs.length < 16) earlyBlobs.push([m.from, m.blob]); } else await onBlob(m.from, m.blob);
      break;
    case 'call_mode_changed':
      showMessage(`This call is now ${m.call_mode === 'e2ee' ? 'end-to-end encrypted' : 'a standard call'}: ${m.reason}`, 'info');
      if (!st.keyed) {
        st.callMode = m.call_mode;
        st.modeReason = m.reason;
        if (m.call_mode !== 'e2ee') { kex = null; if (worker) worker.postMessage({ type: 'mode', mode: 'passthrough' }); }
        renderCallBar();
        renderFeatures();
      }
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
  if (!st.joined) stopMedia();
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
  try {
    localStream = await navigator.mediaDevices.getUserMedia({ audio: true, video: { width: 320, height: 240, frameRate: 30 } });
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
    startWorker();
  }
  pc = new RTCPeerConnection({ iceServers: [] });
  for (const t of localStream.getTracks()) {
    const tr = pc.addTransceiver(t, { direction: 'sendrecv', streams: [localStream] });
    if (e2ee) attachSendTransform(tr.sender, t.kind);
  }
  pc.ontrack = onTrack;
  pc.onconnectionstatechange = () => {
    if (pc && pc.connectionState === 'failed') showMessage('The media connection to the relay failed.');
  };
  await pc.setLocalDescription(await pc.createOffer());
  if (pc.iceGatheringState !== 'complete') {
    await new Promise((resolve) => {
      const t = setTimeout(resolve, 5000);
      pc.addEventListener('icegatheringstatechange', () => { if (pc.iceGatheringState === 'complete') { clearTimeout(t); resolve(); } });
    });
  }
  st.payloadTypes = parsePayloadTypes(pc.localDescription.sdp);
  addLocalTile();
  send({ type: 'join', call, e2ee_enabled: e2ee, offer_sdp: pc.localDescription.sdp });
}

async function onJoined(m) {
  st.me = m.participant;
  st.callMode = m.call_mode;
  st.modeReason = m.mode_reason || null;
  for (const p of m.participants || []) st.participants.set(p.participant, p);
  setRemoteMsid(m.answer_sdp);
  await pc.setRemoteDescription({ type: 'answer', sdp: m.answer_sdp });
  st.joined = true;
  st.joinedAt = performance.now();
  if (worker && st.callMode !== 'e2ee') worker.postMessage({ type: 'mode', mode: 'passthrough' });
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
  const first = [...st.participants.values()][0];
  if (st.callMode === 'e2ee' && first) {
    await startKex(first);
    for (const [from, blob] of earlyBlobs.splice(0)) await onBlob(from, blob);
  }
}

function onTrack(ev) {
  attachRecvTransform(ev.receiver, ev.track.kind);
  const mid = ev.transceiver ? ev.transceiver.mid : null;
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
    renderCallBar();
    renderChat();
  }
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
  li.textContent = `${who ? who.user : m.from}: ${text}${sealed ? '' : st.callMode === 'e2ee' ? ' (not encrypted)' : ''}`;
  $('chat-log').appendChild(li);
}

async function sendChat(text) {
  if (!text) return;
  let body = text;
  if (st.callMode === 'e2ee') {
    if (!st.keyed) return;
    const r = await rpc({ type: 'seal_chat', text });
    if (r.error) { showMessage(`Chat not sent: ${r.error}`); return; }
    body = r.body;
  }
  send({ type: 'chat', body });
  st.chat.push({ from: st.me, text, sealed: st.callMode === 'e2ee', mine: true });
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
  box.append(label, p);
}

function renderCallBar() {
  const b = $('mode-badge');
  b.textContent = st.callMode === 'e2ee' ? 'end-to-end encrypted' : 'standard call';
  b.className = `badge ${st.callMode}`;
  const lock = $('lock');
  lock.hidden = st.callMode !== 'e2ee';
  lock.title = st.keyed ? 'End-to-end encrypted: click to show the verification code' : 'Waiting for end-to-end keys';
  lock.classList.toggle('pending', !st.keyed);
  $('lock-shackle').setAttribute('d', st.keyed ? 'M8 10V7a4 4 0 0 1 8 0v3' : 'M8 10V7a4 4 0 0 1 8 0');
  $('lock-label').textContent = st.keyed ? 'end-to-end encrypted' : 'waiting for end-to-end keys';
  $('code').textContent = st.code || 'waiting for the other participant';
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
  stats.forEach((s) => {
    if (s.type !== 'inbound-rtp') return;
    const participant = ssrcOwner[String(s.ssrc)] || (s.mid != null ? remoteMsid.byMid[s.mid] : null) || null;
    const e = { participant, kind: s.kind, ssrc: s.ssrc, mid: s.mid ?? null, framesDecoded: s.framesDecoded || 0, packetsReceived: s.packetsReceived || 0 };
    if (s.kind === 'audio') {
      e.totalSamplesReceived = s.totalSamplesReceived || 0;
      e.concealedSamples = s.concealedSamples || 0;
      e.totalAudioEnergy = s.totalAudioEnergy || 0;
      e.totalSamplesDuration = s.totalSamplesDuration || 0;
      e.audioLevel = s.audioLevel || 0;
    }
    inbound.push(e);
  });
  st.inbound = inbound;
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
  const e2ee = st.callMode === 'e2ee';
  $('features-note').textContent = e2ee
    ? 'Unavailable on an end-to-end encrypted call: each needs the media in the clear or a third party in a one-to-one call.'
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
      b.disabled = true;
      b.title = E2EE_FEATURE_REASON[name];
      const why = document.createElement('span');
      why.className = 'why';
      why.id = `why-${name}`;
      why.textContent = E2EE_FEATURE_REASON[name];
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
  const e2ee = st.callMode === 'e2ee';
  $('chat-e2ee').textContent = e2ee
    ? (st.keyed ? 'Chat is end-to-end encrypted (sealed with the call\'s keys).' : 'Chat opens once the call is keyed.')
    : 'Chat is not end-to-end encrypted: the relay can read it.';
  const enabled = st.joined && (!e2ee || st.keyed);
  $('chat-input').disabled = !enabled;
  $('chat-send').disabled = !enabled;
}

function stopMedia() {
  if (localStream) localStream.getTracks().forEach((t) => t.stop());
  localStream = null;
  if (pc) try { pc.close(); } catch (e) { /* closing */ }
  pc = null;
  if (worker) worker.terminate();
  worker = null;
  document.querySelectorAll('.tile').forEach((t) => t.remove());
}

function endCall(sendLeave) {
  if (sendLeave) send({ type: 'leave' });
  for (const t of timers) clearInterval(t);
  timers = [];
  stopMedia();
  kex = null;
  earlyBlobs = [];
  Object.assign(st, { joined: false, keyed: false, code: null, callMode: null, me: null, joinedAt: null });
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
      participant: st.me,
      participants: [...st.participants.keys()],
      frames_encrypted: w.frames_encrypted,
      frames_decrypted: w.frames_decrypted,
      decrypt_failures: w.decrypt_failures,
      last_decrypt_error: w.last_error || null,
      dropped_before_keys: w.dropped_before_keys || 0,
      empty_frames: w.empty_frames || 0,
      inbound: st.inbound.map((i) => ({ ...i })),
      payload_types: { ...st.payloadTypes },
      error: st.error,
      kex_error: st.kexError,
      messages: st.messages.map((m) => m.text),
      chat: st.chat.map((c) => ({ ...c })),
      features: st.features.map((f) => ({ ...f })),
    };
  },
  sampleVideo,
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
$('leave').onclick = () => endCall(true);
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
  if (params.get('call')) $('call').value = params.get('call');
  if (params.get('token')) $('token').value = params.get('token');
  if (params.get('name')) $('name').value = params.get('name');
  if (params.get('autojoin') !== '1') return;
  let token = $('token').value.trim();
  if (!token && $('name').value) token = await devToken();
  if (!token) return;
  if (await connect(token)) await join();
})().catch((e) => showMessage(String(e.message || e)));
