// The web client's key agreement replays exchanges that e2ee-client (Rust) computed
// (web/test/kex-vectors.json, written by e2ee-client's kex::web_vectors test): same blobs,
// context, transcript, SFrame base keys, verification code, and SFrame frames that open.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import {
  KeyAgreement, chooseRole, encodeContext, commitHash, transcriptHash, fromBlob, toBlob, codeDigits, formatCode,
} from '../kex.js';
import { SframeReceiver, SframeSender, hexToBytes as h, bytesToHex as hex } from '../sframe.js';

const { cases } = JSON.parse(readFileSync(new URL('./kex-vectors.json', import.meta.url)));

test('there are Rust-written cases, including non-ASCII ids', () => {
  assert.ok(cases.length >= 4);
  assert.ok(cases.some((c) => /[^\x00-\x7f]/.test(c.initiator_id)));
});

for (const [n, c] of cases.entries()) {
  test(`case ${n}: JS reproduces the Rust exchange (${c.initiator_id} -> ${c.responder_id})`, async () => {
    assert.equal(chooseRole(c.initiator_id, c.responder_id), 'initiator');
    assert.equal(chooseRole(c.responder_id, c.initiator_id), 'responder');
    const ctx = encodeContext(c.call, c.initiator_id, c.responder_id);
    assert.equal(hex(ctx), c.context);

    const ini = await KeyAgreement.create(c.call, c.initiator_id, c.responder_id, { seedForTest: h(c.initiator_seed) });
    const res = await KeyAgreement.create(c.call, c.responder_id, c.initiator_id, { seedForTest: h(c.responder_seed) });
    assert.equal(hex(ini.publicKey), c.initiator_public);
    assert.equal(hex(res.publicKey), c.responder_public);
    assert.equal(await res.start(), null, 'the responder only reacts');
    const commit = await ini.start();
    assert.equal(commit, c.commit_blob);
    const pub = await res.handle(commit);
    assert.equal(pub, c.public_blob);
    const reveal = await ini.handle(pub);
    assert.equal(reveal, c.reveal_blob);
    assert.equal(await res.handle(reveal), null);
    const t = await transcriptHash(ctx, await commitHash(ctx, h(c.initiator_public)), h(c.responder_public), h(c.initiator_public));
    assert.equal(hex(t), c.transcript);
    for (const k of [ini.keys, res.keys]) assert.equal(k.verificationCode, c.verification_code);
    assert.equal(hex(ini.keys.sendKey), c.i2r);
    assert.equal(hex(ini.keys.recvKey), c.r2i);
    assert.equal(hex(res.keys.sendKey), c.r2i);
    assert.equal(hex(res.keys.recvKey), c.i2r);
    assert.deepEqual([ini.keys.sendKid, res.keys.sendKid], [1, 2]);

    // Frames Rust sealed open in JS with the derived keys, and JS seals the same bytes.
    const rx = { initiator: await SframeReceiver.create(res.keys.recvKey, res.keys.recvKid), responder: await SframeReceiver.create(ini.keys.recvKey, ini.keys.recvKid) };
    const tx = { initiator: await SframeSender.create(ini.keys.sendKey, ini.keys.sendKid), responder: await SframeSender.create(res.keys.sendKey, res.keys.sendKid) };
    for (const f of c.frames) {
      const opened = await rx[f.sender].open(h(f.metadata), h(f.sealed));
      assert.equal(hex(opened.plaintext), f.plaintext);
      assert.equal(hex(await tx[f.sender].seal(h(f.metadata), h(f.plaintext))), f.sealed);
    }
  });
}

test('a man in the middle who swaps keys makes the codes differ', async () => {
  const c = cases[0];
  const ini = await KeyAgreement.create(c.call, c.initiator_id, c.responder_id);
  const res = await KeyAgreement.create(c.call, c.responder_id, c.initiator_id);
  const mitmToRes = await KeyAgreement.create(c.call, c.initiator_id, c.responder_id);
  const mitmToIni = await KeyAgreement.create(c.call, c.responder_id, c.initiator_id);
  // The relay answers the initiator itself and opens its own exchange with the responder.
  const pubForIni = await mitmToIni.handle(await ini.start());
  await mitmToRes.handle(await res.handle(await mitmToRes.start()))
    .then((reveal) => res.handle(reveal));
  await mitmToIni.handle(await ini.handle(pubForIni));
  assert.notEqual(ini.keys.verificationCode, res.keys.verificationCode);
});

test('a reveal that does not match the commitment aborts', async () => {
  const c = cases[0];
  const ini = await KeyAgreement.create(c.call, c.initiator_id, c.responder_id);
  const res = await KeyAgreement.create(c.call, c.responder_id, c.initiator_id);
  const other = await KeyAgreement.create(c.call, c.initiator_id, c.responder_id);
  await res.handle(await ini.start());
  await other.start();
  const bad = toBlob({ t: 'reveal', publicKey: other.publicKey });
  await assert.rejects(res.handle(bad), { code: 'commit_mismatch' });
  await assert.rejects(res.handle(bad), { code: 'aborted' });
  assert.equal(res.keys, null);
});

test('blob parsing is strict like e2ee-client', () => {
  const ok = '{"v":1,"t":"commit","h":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}';
  assert.equal(toBlob(fromBlob(ok)), ok);
  for (const [blob, code] of [
    ['{"v":2,"t":"commit","h":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}', 'version'],
    ['{"v":1,"t":"commit","h":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA","x":1}', 'unknown_field'],
    ['{"v":1,"t":"commit","h":"AAAA"}', 'length'],
    ['{"v":1,"t":"commit","h":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAB"}', 'encoding'],
    ['{"v":1,"t":"public","h":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}', 'unexpected_field'],
    ['{"v":1,"t":"nope"}', 'unknown_type'],
    ['x'.repeat(600), 'too_large'],
  ]) assert.throws(() => fromBlob(blob), { code }, blob.slice(0, 40));
});

test('codes are 20 digits in groups of five', () => {
  assert.equal(formatCode(codeDigits(new Uint8Array(16))), '00000 00000 00000 00000');
  const okm = new Uint8Array(16);
  new DataView(okm.buffer).setBigUint64(8, 12345678901234567890n);
  assert.equal(formatCode(codeDigits(okm)), '12345 67890 12345 67890');
});
