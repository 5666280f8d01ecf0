// The web client's SFrame against the RFC 9605 test vectors (suite 4, AES_128_GCM_SHA256_128)
// and its own properties (CTR monotonic, replay refused, tampering refused, VP8 framing).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import {
  encodeHeader, decodeHeader, deriveKey, sealWith, openWith, keyLabel, saltLabel, nonceFor,
  SframeSender, SframeReceiver, sealMedia, openMedia, vp8ClearBytes, hexToBytes as h, bytesToHex as hex,
} from '../sframe.js';

// KIDs and CTRs go up to 2^64 - 1: read them as strings (JSON numbers lose precision), then BigInt.
const vectors = JSON.parse(String(readFileSync(new URL('./vectors.json', import.meta.url)))
  .replace(/"(kid|ctr)": (\d+)/g, '"$1": "$2"'));

test('the vectors file holds the suite-4 vectors and the header vectors', () => {
  assert.ok(vectors.sframe.length >= 1);
  assert.ok(vectors.sframe.every((v) => v.cipher_suite === 4));
  assert.ok(vectors.header.length > 200);
});

test('header encoding matches every RFC 9605 header vector', () => {
  for (const v of vectors.header) {
    assert.equal(hex(encodeHeader(BigInt(v.kid), BigInt(v.ctr))), v.encoded, `kid ${v.kid} ctr ${v.ctr}`);
    const d = decodeHeader(h(v.encoded));
    assert.equal(d.kid, BigInt(v.kid));
    assert.equal(d.ctr, BigInt(v.ctr));
    assert.equal(d.length, v.encoded.length / 2);
  }
});

test('suite 4: labels, key, salt, nonce and ciphertext match the RFC vectors', async () => {
  for (const v of vectors.sframe) {
    assert.equal(hex(keyLabel(BigInt(v.kid))), v.sframe_key_label);
    assert.equal(hex(saltLabel(BigInt(v.kid))), v.sframe_salt_label);
    const ctx = await deriveKey(h(v.base_key), BigInt(v.kid), { exposeForTest: true });
    assert.equal(hex(ctx.keyBytes), v.sframe_key);
    assert.equal(hex(ctx.salt), v.sframe_salt);
    assert.equal(hex(nonceFor(ctx.salt, BigInt(v.ctr))), v.nonce);
    const ct = await sealWith(ctx, BigInt(v.ctr), h(v.metadata), h(v.pt));
    assert.equal(hex(ct), v.ct);
    const opened = await openWith(ctx, h(v.metadata), h(v.ct));
    assert.equal(hex(opened.plaintext), v.pt);
    assert.equal(opened.ctr, BigInt(v.ctr));
  }
});

test('tampering with ciphertext, header or metadata fails authentication', async () => {
  const v = vectors.sframe[0];
  const ctx = await deriveKey(h(v.base_key), BigInt(v.kid));
  const ct = h(v.ct);
  for (const i of [0, 3, ct.length - 1, 8]) {
    const bad = new Uint8Array(ct);
    bad[i] ^= 1;
    await assert.rejects(openWith(ctx, h(v.metadata), bad));
  }
  await assert.rejects(openWith(ctx, new Uint8Array([1]), ct), { code: 'auth' });
});

test('the sender counts up from 0 and never reuses a CTR, even for concurrent seals', async () => {
  const key = new Uint8Array(16).fill(7);
  const s = await SframeSender.create(key, 1);
  const frames = await Promise.all(Array.from({ length: 50 }, (_, i) => s.seal(new Uint8Array(0), new Uint8Array([i]))));
  const ctrs = frames.map((f) => decodeHeader(f).ctr);
  assert.deepEqual(ctrs, Array.from({ length: 50 }, (_, i) => BigInt(i)));
  assert.equal(s.nextCtr, 50n);
});

test('the receiver opens each frame once: replays and frames behind the window are refused', async () => {
  const key = new Uint8Array(16).fill(9);
  const s = await SframeSender.create(key, 2);
  const r = await SframeReceiver.create(key, 2);
  const f0 = await s.seal(new Uint8Array(0), new Uint8Array([1, 2, 3]));
  const f1 = await s.seal(new Uint8Array(0), new Uint8Array([4]));
  assert.deepEqual((await r.open(new Uint8Array(0), f1)).plaintext, new Uint8Array([4]));
  assert.deepEqual((await r.open(new Uint8Array(0), f0)).plaintext, new Uint8Array([1, 2, 3]));
  await assert.rejects(r.open(new Uint8Array(0), f0), { code: 'replay' });
  await assert.rejects(r.open(new Uint8Array(0), f1), { code: 'replay' });
  const other = await SframeReceiver.create(key, 1);
  await assert.rejects(other.open(new Uint8Array(0), f0), { code: 'unknown_kid' });
  // A forged frame with a fresh CTR does not move the window.
  const forged = new Uint8Array(await s.seal(new Uint8Array(0), new Uint8Array([5])));
  forged[forged.length - 1] ^= 0xff;
  await assert.rejects(r.open(new Uint8Array(0), forged), { code: 'auth' });
  assert.equal(r.window.highest, 1n);
});

test('VP8 framing keeps 10 clear bytes on key frames and 3 on delta frames, authenticated', async () => {
  const key = new Uint8Array(16).fill(3);
  const s = await SframeSender.create(key, 1);
  const r = await SframeReceiver.create(key, 1);
  const keyFrame = Uint8Array.from({ length: 200 }, (_, i) => (i === 0 ? 0x10 : i));   // bit 0 = 0: key frame
  const delta = Uint8Array.from({ length: 120 }, (_, i) => (i === 0 ? 0x31 : 255 - i)); // bit 0 = 1: delta
  assert.equal(vp8ClearBytes(keyFrame), 10);
  assert.equal(vp8ClearBytes(delta), 3);
  for (const [f, n] of [[keyFrame, 10], [delta, 3]]) {
    const sealed = await sealMedia(s, 'video', f);
    assert.deepEqual(sealed.subarray(0, n), f.subarray(0, n), 'clear prefix');
    assert.equal(sealed.length, f.length + 1 + 16 + (decodeHeader(sealed.subarray(n)).length - 1));
    assert.deepEqual(await openMedia(r, 'video', sealed), f);
  }
  // Changing a clear byte (keeping the key/delta bit) breaks authentication.
  const sealed = await sealMedia(s, 'video', delta);
  sealed[1] ^= 0x40;
  await assert.rejects(openMedia(r, 'video', sealed), { code: 'auth' });
  // Audio is one whole SFrame.
  const opus = new Uint8Array([0x78, 1, 2, 3, 4]);
  const a = await sealMedia(s, 'audio', opus);
  assert.equal(decodeHeader(a).kid, 1n);
  assert.deepEqual(await openMedia(r, 'audio', a), opus);
});
