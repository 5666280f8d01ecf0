// The page's MLS (web/mls.js over ts-mls) against a group openmls made
// (web/test/mls-vectors.json, written by e2ee-client's mls::web_vectors test): ts-mls joins
// from openmls's Welcome with the joiner's keys, processes openmls's commits, and must show
// at every epoch the same exporter-derived SFrame base key, the same group code and
// members, and open every member's frames with the key it derives for the sender's KID.
import test from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import {
  CIPHERSUITE, EPOCH_BITS, EXPORTER_LABEL, codeOf, decodeMessage, epochOf, formatCode, joinGroup,
  kid, leafOfKid, members, ownLeaf, processMessage, sframeBaseKey, stateCode, suite, acceptAll,
  emptyPskIndex, textDecoder,
} from '../mls.js';
import { deriveKey, openWith } from '../sframe.js';

const v = JSON.parse(readFileSync(new URL('./mls-vectors.json', import.meta.url)));
const hex = (s) => Uint8Array.from(s.match(/../g) ?? [], (h) => parseInt(h, 16));
const toHex = (b) => Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');

test('the vectors are of the page\'s ciphersuite and derivation constants', () => {
  assert.equal(v.ciphersuite, CIPHERSUITE);
  assert.equal(v.exporter_label, EXPORTER_LABEL);
  assert.equal(v.epoch_bits, EPOCH_BITS);
});

test('KID layout: leaf above EPOCH_BITS, epoch wraps', () => {
  assert.equal(kid(1, 2), (2n << 8n) | 1n);
  assert.equal(kid(257, 3), (3n << 8n) | 1n);
  assert.equal(leafOfKid(kid(300, 7)), 7);
  for (const e of v.epochs) for (const f of e.frames) assert.equal(kid(e.epoch, f.leaf), BigInt(f.kid));
});

test('the group code is what openmls members show', async () => {
  for (const e of v.epochs) {
    assert.equal(await codeOf(hex(e.epoch_authenticator)), e.code);
  }
  assert.match(formatCode(v.epochs[0].code), /^\d{5} \d{5} \d{5} \d{5}$/);
});

async function openAll(state, e) {
  const base = await sframeBaseKey(state);
  assert.equal(toHex(base), e.sframe_base_key, `epoch ${e.epoch}: exporter`);
  for (const f of e.frames) {
    const ctx = await deriveKey(base, BigInt(f.kid));
    const { plaintext } = await openWith(ctx, hex(f.metadata), hex(f.sealed));
    assert.equal(toHex(plaintext), f.plaintext, `epoch ${e.epoch}: leaf ${f.leaf}'s frame`);
  }
}

function sameMembers(state, e) {
  const got = members(state).map((m) => ({
    leaf: m.leaf, identity: textDecoder.decode(m.identity), signature_key: toHex(m.signatureKey),
  }));
  assert.deepEqual(got, e.members, `epoch ${e.epoch}: members`);
}

test('ts-mls joins openmls\'s group from the Welcome and follows its commits', async () => {
  const impl = await suite();
  const welcome = decodeMessage(hex(v.welcome), 'mls_welcome').welcome;
  const kp = decodeMessage(hex(v.joiner.key_package), 'mls_key_package').keyPackage;
  let state = await joinGroup(welcome, kp, {
    initPrivateKey: hex(v.joiner.init_private_key),
    hpkePrivateKey: hex(v.joiner.encryption_private_key),
    signaturePrivateKey: hex(v.joiner.signature_private_key),
  }, emptyPskIndex, impl);
  const [first, ...later] = v.epochs;
  assert.equal(epochOf(state), first.epoch);
  assert.equal(await stateCode(state), first.code);
  sameMembers(state, first);
  const me = first.members.find((m) => m.identity === v.joiner.identity);
  assert.equal(ownLeaf(state), me.leaf);
  await openAll(state, first);
  for (const [i, e] of later.entries()) {
    const msg = decodeMessage(hex(v.commits[i]));
    const r = await processMessage(msg, state, emptyPskIndex, acceptAll, impl);
    assert.equal(r.kind, 'newState');
    state = r.newState;
    assert.equal(epochOf(state), e.epoch);
    assert.equal(await stateCode(state), e.code);
    sameMembers(state, e);
    await openAll(state, e);
  }
});

test('a Welcome for someone else does not open with the joiner\'s keys', async () => {
  const impl = await suite();
  const welcome = decodeMessage(hex(v.welcome), 'mls_welcome').welcome;
  const kp = decodeMessage(hex(v.key_packages.b), 'mls_key_package').keyPackage;
  await assert.rejects(joinGroup(welcome, kp, {
    initPrivateKey: hex(v.joiner.init_private_key),
    hpkePrivateKey: hex(v.joiner.encryption_private_key),
    signaturePrivateKey: hex(v.joiner.signature_private_key),
  }, emptyPskIndex, impl));
});

test('garbage is a typed error, not a crash', () => {
  assert.throws(() => decodeMessage(new Uint8Array([1, 2, 3])), (e) => e.name === 'MlsError');
  assert.throws(() => decodeMessage(hex(v.commits[0]), 'mls_welcome'), (e) => e.code === 'mls_unexpected');
});
