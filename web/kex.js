// 1:1 end-to-end key agreement, byte for byte the protocol of e2ee-client (e2ee-client/src/kex):
// ZRTP-style commit-then-reveal over ephemeral X25519 (WebCrypto), then HKDF-SHA256.
//
//   initiator (the participant id that sorts lower, UTF-8 byte order)
//     Commit { SHA-256("blindrelay-e2ee-v1 commit" || ctx || pk_i) }  ->
//                                             <- Public { pk_r }
//     Reveal { pk_i }                          ->  responder checks the commitment (constant time)
//   ctx        = u16be(len) call || u16be(len) initiator || u16be(len) responder
//   transcript = SHA-256("blindrelay-e2ee-v1 transcript" || ctx || commit || pk_r || pk_i)
//   PRK        = HKDF-Extract(salt = transcript, ikm = X25519(own secret, peer public))
//   i2r, r2i   = HKDF-Expand(PRK, "blindrelay-e2ee-v1 sframe i2r" / "... r2i", 16)
//   code       = HKDF-Expand(PRK, "blindrelay-e2ee-v1 verification code", 16) as a big-endian
//                integer mod 10^20, 20 digits in groups of five
// Blobs: {"v":1,"t":"commit","h":B64URL} / {"v":1,"t":"public","k":..} / {"v":1,"t":"reveal","k":..}
//
// The private key is generated per call and non-extractable; derived keys stay in this
// object (and the SFrame worker); nothing here logs them.
'use strict';

const subtle = () => globalThis.crypto.subtle;
const enc = new TextEncoder();
export const LABELS = {
  commit: 'blindrelay-e2ee-v1 commit',
  transcript: 'blindrelay-e2ee-v1 transcript',
  i2r: 'blindrelay-e2ee-v1 sframe i2r',
  r2i: 'blindrelay-e2ee-v1 sframe r2i',
  code: 'blindrelay-e2ee-v1 verification code',
};
export const KID_INITIATOR = 1;
export const KID_RESPONDER = 2;
export const MAX_BLOB_LEN = 512;

export class KexError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

function concat(...arrays) {
  const len = arrays.reduce((a, b) => a + b.length, 0);
  const out = new Uint8Array(len);
  let at = 0;
  for (const a of arrays) { out.set(a, at); at += a.length; }
  return out;
}

function compareBytes(a, b) {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return a[i] < b[i] ? -1 : 1;
  return a.length === b.length ? 0 : a.length < b.length ? -1 : 1;
}

/** Constant-time equality of two byte arrays of equal length. */
export function ctEqual(a, b) {
  if (a.length !== b.length) return false;
  let d = 0;
  for (let i = 0; i < a.length; i++) d |= a[i] ^ b[i];
  return d === 0;
}

/** 'initiator' or 'responder' for myId facing peerId (lower UTF-8 bytes initiates). */
export function chooseRole(myId, peerId) {
  const c = compareBytes(enc.encode(myId), enc.encode(peerId));
  if (c === 0) throw new KexError('same_ids', 'both participants have the same id');
  return c < 0 ? 'initiator' : 'responder';
}

export function encodeContext(callId, initiatorId, responderId) {
  const parts = [];
  for (const v of [callId, initiatorId, responderId]) {
    const b = enc.encode(v);
    if (b.length > 0xffff) throw new KexError('too_long', 'identifier longer than 65535 bytes');
    parts.push(new Uint8Array([b.length >> 8, b.length & 0xff]), b);
  }
  return concat(...parts);
}

async function sha256(...parts) {
  return new Uint8Array(await subtle().digest('SHA-256', concat(...parts)));
}

export async function commitHash(ctx, pkI) {
  return sha256(enc.encode(LABELS.commit), ctx, pkI);
}

export async function transcriptHash(ctx, commit, pkR, pkI) {
  return sha256(enc.encode(LABELS.transcript), ctx, commit, pkR, pkI);
}

/** 16 bytes (big-endian integer) -> 20 digits, zero-padded. */
export function codeDigits(okm) {
  let v = 0n;
  for (const b of okm) v = (v << 8n) | BigInt(b);
  return (v % 10n ** 20n).toString().padStart(20, '0');
}

/** "12345 67890 12345 67890" */
export function formatCode(digits) {
  return digits.match(/.{1,5}/g).join(' ');
}

/** Derives the session keys from the X25519 shared secret and the transcript. */
export async function deriveSessionKeys(shared, transcript, role) {
  let zero = 0;
  for (const b of shared) zero |= b;
  if (zero === 0) throw new KexError('low_order', 'peer public key is a low-order point');
  const ikm = await subtle().importKey('raw', shared, 'HKDF', false, ['deriveBits']);
  const expand = async (info) => new Uint8Array(await subtle().deriveBits(
    { name: 'HKDF', hash: 'SHA-256', salt: transcript, info: enc.encode(info) }, ikm, 128));
  const i2r = await expand(LABELS.i2r);
  const r2i = await expand(LABELS.r2i);
  const digits = codeDigits(await expand(LABELS.code));
  const initiator = role === 'initiator';
  return {
    sendKey: initiator ? i2r : r2i,
    recvKey: initiator ? r2i : i2r,
    sendKid: initiator ? KID_INITIATOR : KID_RESPONDER,
    recvKid: initiator ? KID_RESPONDER : KID_INITIATOR,
    verificationCode: formatCode(digits),
  };
}

// --- blobs ---

function b64url(bytes) {
  let s = '';
  for (const b of bytes) s += String.fromCharCode(b);
  return btoa(s).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

function unb64url(field, text) {
  if (typeof text !== 'string' || !/^[A-Za-z0-9_-]*$/.test(text)) throw new KexError('encoding', `field ${field} is not base64url`);
  let bin;
  try {
    bin = atob(text.replace(/-/g, '+').replace(/_/g, '/') + '='.repeat((4 - (text.length % 4)) % 4));
  } catch (e) {
    throw new KexError('encoding', `field ${field} is not base64url`);
  }
  const out = Uint8Array.from(bin, (c) => c.charCodeAt(0));
  if (out.length !== 32) throw new KexError('length', `field ${field} has ${out.length} bytes, expected 32`);
  if (b64url(out) !== text) throw new KexError('encoding', `field ${field} is not canonical base64url`);
  return out;
}

export function toBlob(msg) {
  const [field, bytes] = msg.t === 'commit' ? ['h', msg.hash] : ['k', msg.publicKey];
  return `{"v":1,"t":"${msg.t}","${field}":"${b64url(bytes)}"}`;
}

export function fromBlob(blob) {
  if (typeof blob !== 'string' || blob.length > MAX_BLOB_LEN) throw new KexError('too_large', 'blob too large');
  let w;
  try { w = JSON.parse(blob); } catch (e) { throw new KexError('json', 'blob is not JSON'); }
  if (!w || typeof w !== 'object' || Array.isArray(w)) throw new KexError('json', 'blob is not an object');
  for (const k of Object.keys(w)) if (!['v', 't', 'h', 'k'].includes(k)) throw new KexError('unknown_field', `unknown field ${k}`);
  if (w.v === undefined) throw new KexError('missing', 'missing field v');
  if (w.v !== 1) throw new KexError('version', `unsupported version ${w.v}`);
  if (w.t === 'commit') {
    if (w.k !== undefined) throw new KexError('unexpected_field', 'unexpected field k');
    return { t: 'commit', hash: unb64url('h', w.h) };
  }
  if (w.t === 'public' || w.t === 'reveal') {
    if (w.h !== undefined) throw new KexError('unexpected_field', 'unexpected field h');
    return { t: w.t, publicKey: unb64url('k', w.k) };
  }
  throw new KexError('unknown_type', 'unknown message type');
}

// --- the state machine ---

/** PKCS#8 wrapping of a raw X25519 private key (RFC 8410), for deterministic tests. */
export function x25519Pkcs8(seed) {
  return concat(new Uint8Array([0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x6e, 0x04, 0x22, 0x04, 0x20]), seed);
}

async function keyPair(seedForTest) {
  if (seedForTest) {
    const privateKey = await subtle().importKey('pkcs8', x25519Pkcs8(seedForTest), { name: 'X25519' }, true, ['deriveBits']);
    const jwk = await subtle().exportKey('jwk', privateKey);
    const pub = unb64url('x', jwk.x);
    return { privateKey, publicKey: pub };
  }
  const kp = await subtle().generateKey({ name: 'X25519' }, false, ['deriveBits']);
  return { privateKey: kp.privateKey, publicKey: new Uint8Array(await subtle().exportKey('raw', kp.publicKey)) };
}

/**
 * One side of one call's key agreement. `await KeyAgreement.create(call, me, peer)`, then
 * `start()` (the initiator's Commit blob, or null) and `handle(blob)` (the reply blob, or
 * null). `keys` is set once done. Security failures abort; later messages are refused.
 */
export class KeyAgreement {
  static async create(callId, myId, peerId, { seedForTest } = {}) {
    const k = new KeyAgreement();
    k.role = chooseRole(myId, peerId);
    const [ini, res] = k.role === 'initiator' ? [myId, peerId] : [peerId, myId];
    k.ctx = encodeContext(callId, ini, res);
    k.callId = callId;
    k.peerId = peerId;
    const kp = await keyPair(seedForTest);
    k.privateKey = kp.privateKey;
    k.publicKey = kp.publicKey;
    k.state = k.role === 'initiator' ? 'initiator_idle' : 'responder_idle';
    k.keys = null;
    return k;
  }

  async start() {
    if (this.state !== 'initiator_idle') return null;
    this.commit = await commitHash(this.ctx, this.publicKey);
    this.state = 'initiator_committed';
    return toBlob({ t: 'commit', hash: this.commit });
  }

  async handle(blob) {
    const msg = fromBlob(blob);
    if (this.state === 'failed') throw new KexError('aborted', 'key agreement aborted');
    try {
      if (this.state === 'responder_idle' && msg.t === 'commit') {
        this.commit = msg.hash;
        this.state = 'responder_awaiting_reveal';
        return toBlob({ t: 'public', publicKey: this.publicKey });
      }
      if (this.state === 'initiator_committed' && msg.t === 'public') {
        this.state = 'failed';
        const transcript = await transcriptHash(this.ctx, this.commit, msg.publicKey, this.publicKey);
        this.keys = await this.finish(msg.publicKey, transcript);
        this.state = 'done';
        return toBlob({ t: 'reveal', publicKey: this.publicKey });
      }
      if (this.state === 'responder_awaiting_reveal' && msg.t === 'reveal') {
        this.state = 'failed';
        const expected = await commitHash(this.ctx, msg.publicKey);
        if (!ctEqual(expected, this.commit)) throw new KexError('commit_mismatch', 'the revealed key does not match its commitment');
        const transcript = await transcriptHash(this.ctx, this.commit, this.publicKey, msg.publicKey);
        this.keys = await this.finish(msg.publicKey, transcript);
        this.state = 'done';
        return null;
      }
    } catch (e) {
      this.state = 'failed';
      this.privateKey = null;
      throw e;
    }
    throw new KexError('unexpected', `unexpected ${msg.t} in state ${this.state}`);
  }

  async finish(peerPublic, transcript) {
    if (ctEqual(peerPublic, this.publicKey)) throw new KexError('reflected', 'peer sent our own public key');
    const peer = await subtle().importKey('raw', peerPublic, { name: 'X25519' }, false, []);
    let shared;
    try {
      shared = new Uint8Array(await subtle().deriveBits({ name: 'X25519', public: peer }, this.privateKey, 256));
    } catch (e) {
      // WebCrypto refuses an all-zero X25519 result (a low-order peer key).
      throw new KexError('low_order', 'peer public key is a low-order point');
    } finally {
      this.privateKey = null; // ephemeral: one use
    }
    try {
      return await deriveSessionKeys(shared, transcript, this.role);
    } finally {
      shared.fill(0);
    }
  }
}
