// SFrame (RFC 9605), cipher suite AES_128_GCM_SHA256_128 (0x0004), with WebCrypto.
// The same code runs in the page, in the RTCRtpScriptTransform worker and under node:test.
//
//   sframe_secret = HKDF-Extract("", base_key)
//   sframe_key    = HKDF-Expand(sframe_secret, "SFrame 1.0 Secret key "  || KID(8 BE) || suite(2 BE), 16)
//   sframe_salt   = HKDF-Expand(sframe_secret, "SFrame 1.0 Secret salt " || KID(8 BE) || suite(2 BE), 12)
//   nonce         = salt XOR CTR (big-endian, right-aligned)
//   frame         = header || AES-128-GCM(key, nonce, aad = header || metadata, plaintext) (16-byte tag)
//
// Keys are imported non-extractable; nothing here logs or returns key bytes.
'use strict';

export const SUITE_AES_128_GCM_SHA256_128 = 4;
export const TAG_LEN = 16;
const NK = 16;
const NN = 12;
const subtle = () => globalThis.crypto.subtle;
const enc = new TextEncoder();
const MAX_U64 = (1n << 64n) - 1n;

export class SframeError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

function be(value, len) {
  const out = new Uint8Array(len);
  let v = BigInt(value);
  for (let i = len - 1; i >= 0; i--) {
    out[i] = Number(v & 0xffn);
    v >>= 8n;
  }
  return out;
}

function minLen(v) {
  let n = 1;
  while (n < 8 && v >= 1n << BigInt(8 * n)) n++;
  return n;
}

/** Encodes an SFrame header (RFC 9605 §4.3, minimal encoding). kid and ctr: BigInt or Number. */
export function encodeHeader(kid, ctr) {
  kid = BigInt(kid);
  ctr = BigInt(ctr);
  if (kid < 0n || kid > MAX_U64 || ctr < 0n || ctr > MAX_U64) throw new SframeError('range', 'KID or CTR out of range');
  const parts = [];
  let config = 0;
  if (kid < 8n) config |= Number(kid) << 4;
  else {
    const n = minLen(kid);
    config |= 0x80 | ((n - 1) << 4);
    parts.push(be(kid, n));
  }
  if (ctr < 8n) config |= Number(ctr);
  else {
    const n = minLen(ctr);
    config |= 0x08 | (n - 1);
    parts.push(be(ctr, n));
  }
  const len = 1 + parts.reduce((a, p) => a + p.length, 0);
  const out = new Uint8Array(len);
  out[0] = config;
  let at = 1;
  for (const p of parts) { out.set(p, at); at += p.length; }
  return out;
}

/** Decodes the header at the start of `bytes`: {kid, ctr (BigInt), length}. */
export function decodeHeader(bytes) {
  if (bytes.length < 1) throw new SframeError('short', 'empty SFrame');
  const c = bytes[0];
  let at = 1;
  const field = (extended, v) => {
    if (!extended) return BigInt(v);
    const n = v + 1;
    if (bytes.length < at + n) throw new SframeError('short', 'truncated SFrame header');
    let x = 0n;
    for (let i = 0; i < n; i++) x = (x << 8n) | BigInt(bytes[at + i]);
    at += n;
    return x;
  };
  const kid = field((c & 0x80) !== 0, (c >> 4) & 0x07);
  const ctr = field((c & 0x08) !== 0, c & 0x07);
  return { kid, ctr, length: at };
}

function concat(...arrays) {
  const len = arrays.reduce((a, b) => a + b.length, 0);
  const out = new Uint8Array(len);
  let at = 0;
  for (const a of arrays) { out.set(a, at); at += a.length; }
  return out;
}

function label(text, kid, suite) {
  return concat(enc.encode(text), be(kid, 8), be(suite, 2));
}

/** The HKDF labels of RFC 9605 §4.4.2 (exported for the vector tests). */
export function keyLabel(kid, suite = SUITE_AES_128_GCM_SHA256_128) { return label('SFrame 1.0 Secret key ', kid, suite); }
export function saltLabel(kid, suite = SUITE_AES_128_GCM_SHA256_128) { return label('SFrame 1.0 Secret salt ', kid, suite); }

async function hkdfBits(ikm, salt, info, bytes) {
  const k = await subtle().importKey('raw', ikm, 'HKDF', false, ['deriveBits']);
  return new Uint8Array(await subtle().deriveBits({ name: 'HKDF', hash: 'SHA-256', salt, info }, k, bytes * 8));
}

/**
 * The per-KID key context: a non-extractable AES-128-GCM key and the salt.
 * `exposeForTest` returns the derived key bytes too (only the vector tests ask).
 */
export async function deriveKey(baseKey, kid, { exposeForTest = false } = {}) {
  const suite = SUITE_AES_128_GCM_SHA256_128;
  const keyBytes = await hkdfBits(baseKey, new Uint8Array(0), keyLabel(kid, suite), NK);
  const salt = await hkdfBits(baseKey, new Uint8Array(0), saltLabel(kid, suite), NN);
  const key = await subtle().importKey('raw', keyBytes, { name: 'AES-GCM' }, false, ['encrypt', 'decrypt']);
  const ctx = { kid: BigInt(kid), key, salt };
  if (exposeForTest) ctx.keyBytes = keyBytes;
  else keyBytes.fill(0);
  return ctx;
}

export function nonceFor(salt, ctr) {
  const n = new Uint8Array(salt);
  const c = be(ctr, 8);
  for (let i = 0; i < 8; i++) n[NN - 8 + i] ^= c[i];
  return n;
}

/** Seals with an explicit CTR (stateless: for vectors; live traffic uses SframeSender). */
export async function sealWith(ctx, ctr, metadata, plaintext) {
  const header = encodeHeader(ctx.kid, ctr);
  const aad = concat(header, metadata || new Uint8Array(0));
  const ct = new Uint8Array(await subtle().encrypt(
    { name: 'AES-GCM', iv: nonceFor(ctx.salt, BigInt(ctr)), additionalData: aad, tagLength: 128 },
    ctx.key, plaintext));
  return concat(header, ct);
}

/** Opens a frame with `ctx` (whose KID must match the header): {kid, ctr, plaintext}. */
export async function openWith(ctx, metadata, frame) {
  const h = decodeHeader(frame);
  if (h.kid !== ctx.kid) throw new SframeError('unknown_kid', `no key for KID ${h.kid}`);
  if (frame.length < h.length + TAG_LEN) throw new SframeError('short', 'SFrame shorter than header + tag');
  const header = frame.subarray(0, h.length);
  const aad = concat(header, metadata || new Uint8Array(0));
  let pt;
  try {
    pt = await subtle().decrypt(
      { name: 'AES-GCM', iv: nonceFor(ctx.salt, h.ctr), additionalData: aad, tagLength: 128 },
      ctx.key, frame.subarray(h.length));
  } catch (e) {
    throw new SframeError('auth', 'SFrame authentication failed');
  }
  return { kid: h.kid, ctr: h.ctr, plaintext: new Uint8Array(pt) };
}

/**
 * One sending key: a KID and a strictly increasing CTR. The CTR is taken before the
 * (asynchronous) encryption starts, so concurrent seals never share a nonce; the counter
 * never wraps (the sender refuses at 2^64 - 1).
 */
export class SframeSender {
  constructor(ctx) {
    this.ctx = ctx;
    this.nextCtr = 0n;
  }
  static async create(baseKey, kid) {
    return new SframeSender(await deriveKey(baseKey, kid));
  }
  async seal(metadata, plaintext) {
    if (this.nextCtr > MAX_U64) throw new SframeError('exhausted', 'SFrame counter exhausted');
    const ctr = this.nextCtr;
    this.nextCtr += 1n;
    return sealWith(this.ctx, ctr, metadata, plaintext);
  }
}

/** Sliding replay window over CTRs (like e2ee-client's ReplayWindow). */
export class ReplayWindow {
  constructor(size = 1024) {
    this.size = BigInt(size);
    this.highest = null;
    this.seen = new Set();
  }
  check(ctr) {
    if (this.highest === null || ctr > this.highest) return;
    if (this.highest - ctr >= this.size) throw new SframeError('too_old', `CTR ${ctr} is behind the replay window`);
    if (this.seen.has(ctr)) throw new SframeError('replay', `CTR ${ctr} was already received`);
  }
  accept(ctr) {
    this.seen.add(ctr);
    if (this.highest === null || ctr > this.highest) this.highest = ctr;
    if (this.seen.size > 2 * Number(this.size)) {
      for (const c of this.seen) if (this.highest - c >= this.size) this.seen.delete(c);
    }
  }
}

/**
 * One receiving key (the peer's KID), with replay protection. The window is updated only
 * after a frame authenticates, so forged frames cannot move it.
 */
export class SframeReceiver {
  constructor(ctx, windowSize = 1024) {
    this.ctx = ctx;
    this.window = new ReplayWindow(windowSize);
  }
  static async create(baseKey, kid) {
    return new SframeReceiver(await deriveKey(baseKey, kid));
  }
  async open(metadata, frame) {
    const h = decodeHeader(frame);
    if (h.kid !== this.ctx.kid) throw new SframeError('unknown_kid', `no key for KID ${h.kid}`);
    this.window.check(h.ctr);
    const r = await openWith(this.ctx, metadata, frame);
    // Re-check: another frame with this CTR may have been accepted while this one decrypted.
    this.window.check(r.ctr);
    this.window.accept(r.ctr);
    return r;
  }
}

// --- How the web client frames media (documented in README, mirrored by e2ee-client) ---
//
// Audio (Opus): the whole encoded frame is one SFrame (metadata empty).
// Video (VP8): the first bytes of the VP8 payload header stay clear, as Jitsi and LiveKit do,
// because Chromium's VP8 depacketizer reads the key-frame bit and the key frame's size from
// them before the receiver's transform runs: 10 bytes on a key frame (frame tag, start code,
// width and height; RFC 6386 §9.1), 3 on a delta frame (the frame tag). The clear bytes are
// the SFrame metadata, so they are authenticated. Which case applies follows from bit 0 of
// the first byte (0 = key frame), so a receiver needs no side channel.

/**
 * Clear VP8 header length of an encoded VP8 frame: 10 on a key frame, 3 on a delta frame
 * (never more than the frame; a valid VP8 frame is always at least that long).
 */
export function vp8ClearBytes(frame) {
  if (frame.length === 0) return 0;
  const n = (frame[0] & 0x01) === 0 ? 10 : 3;
  return Math.min(n, frame.length);
}

/** Seals one encoded media frame the way the web client sends it. */
export async function sealMedia(sender, kind, frame) {
  const clear = kind === 'video' ? vp8ClearBytes(frame) : 0;
  const meta = frame.subarray(0, clear);
  const sealed = await sender.seal(meta, frame.subarray(clear));
  return concat(meta, sealed);
}

/** Opens one received media frame (the inverse of sealMedia). */
export async function openMedia(receiver, kind, frame) {
  const clear = kind === 'video' ? vp8ClearBytes(frame) : 0;
  const meta = frame.subarray(0, clear);
  const r = await receiver.open(meta, frame.subarray(clear));
  return concat(meta, r.plaintext);
}

export const bytes = { concat, be };

export function hexToBytes(hex) {
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.substr(2 * i, 2), 16);
  return out;
}

export function bytesToHex(b) {
  return Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
}
