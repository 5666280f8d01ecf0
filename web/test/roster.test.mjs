// The page's roster checks (web/roster.js), the cases of e2ee-client/src/roster.rs's tests.
import test from 'node:test';
import assert from 'node:assert/strict';
import { Roster, Refusal, identityBytes, parseIdentity, MAX_ANNOUNCED, MAX_IDENTITY_BYTES } from '../roster.js';

const cand = (participant, user, key) => ({
  identity: identityBytes({ participant, user }),
  signatureKey: new Uint8Array(32).fill(key),
});
const reason = (f) => {
  try { f(); } catch (e) { assert.ok(e instanceof Refusal, String(e)); return e.reason; }
  assert.fail('accepted');
};

test('KeyPackages must name an announced sender', () => {
  const r = new Roster('p-a', 'ann');
  r.joined('p-b', 'ben');
  assert.deepEqual(r.check(cand('p-b', 'ben', 1), 'p-b'), { participant: 'p-b', user: 'ben', token: undefined });
  assert.equal(reason(() => r.check(cand('p-x', 'mallory', 1), 'p-x')), 'unannounced');
  assert.equal(reason(() => r.check(cand('p-ghost', 'ben', 1), 'p-b')), 'not_the_sender');
  assert.equal(reason(() => r.check(cand('p-b', 'bob', 1), 'p-b')), 'user_mismatch');
  const bad = { identity: new TextEncoder().encode('p-b'), signatureKey: new Uint8Array(32) };
  assert.equal(reason(() => r.check(bad, 'p-b')), 'bad_credential');
  // Someone who left was still announced: a commit in flight may add them.
  r.left('p-b');
  assert.equal(r.isPresent('p-b'), false);
  assert.equal(r.check(cand('p-b', 'ben', 1), null).participant, 'p-b');
  // Leaving never removes oneself.
  r.left('p-a');
  assert.equal(r.isPresent('p-a'), true);
});

test('a group names nobody twice', () => {
  const r = new Roster('p-a', 'ann');
  r.joined('p-b', 'ben');
  const a = cand('p-a', 'ann', 1);
  const b = cand('p-b', 'ben', 2);
  assert.equal(r.checkAll([a, b]).length, 2);
  assert.equal(reason(() => r.checkAll([a, b, cand('p-b', 'ben', 3)])), 'duplicate');
  r.joined('p-c', 'cat');
  assert.equal(reason(() => r.checkAll([a, b, cand('p-c', 'cat', 2)])), 'duplicate_key');
});

test('the issuer check runs on every credential', () => {
  const r = new Roster('p-a', 'ann', (id, key) =>
    (id.token === 'good' && key.every((x) => x === 7) ? null : 'not signed by the issuer'));
  r.joined('p-b', 'ben');
  const c = cand('p-b', 'ben', 7);
  assert.equal(reason(() => r.check(c, 'p-b')), 'unverified');
  c.identity = identityBytes({ participant: 'p-b', user: 'ben', token: 'good' });
  assert.equal(r.check(c, 'p-b').token, 'good');
});

test('announcements are bounded', () => {
  const r = new Roster('p-me', 'me');
  for (let i = 0; i < MAX_ANNOUNCED + 100; i++) {
    r.joined(`p-${i}`, 'u');
    r.left(`p-${i}`);
  }
  assert.ok(r.announced.size <= MAX_ANNOUNCED);
  assert.ok(r.announced.has('p-me'));
});

test('identities: the JSON e2ee-client writes, and nothing else', () => {
  // Byte-for-byte what serde_json writes for MemberIdentity (field order, no token).
  assert.equal(new TextDecoder().decode(identityBytes({ participant: 'p-a', user: 'alice' })),
    '{"participant":"p-a","user":"alice"}');
  const enc = (s) => new TextEncoder().encode(s);
  for (const bad of ['null', '[]', '{"participant":1,"user":"u"}', '{"participant":"p"}',
    '{"participant":"p","user":"u","token":5}', '\u00ff{']) {
    assert.equal(reason(() => parseIdentity(enc(bad))), 'bad_credential', bad);
  }
  assert.equal(reason(() => parseIdentity(new Uint8Array([0xff, 0xfe]))), 'bad_credential');
  assert.equal(reason(() => parseIdentity(new Uint8Array(MAX_IDENTITY_BYTES + 1))), 'bad_credential');
});
