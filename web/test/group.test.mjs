// The page's group session (web/group.js over ts-mls), driven through the relay's Delivery
// Service rules without sockets (as e2ee-client's group.rs tests do): the first commit per
// epoch wins, KeyPackages go to members, Welcomes to the waiting, joins and leaves are
// announced. Time is virtual (ms).
import test from 'node:test';
import assert from 'node:assert/strict';
import { GroupSession, OpenError } from '../group.js';
import { decodeMessage } from '../mls.js';

class Ds {
  constructor() {
    this.epoch = 0;
    this.present = [];
    this.sessions = new Map();
    this.inbox = new Map();
    this.now = 0;
  }
  deliver(to, m) {
    if (!this.inbox.has(to)) this.inbox.set(to, []);
    this.inbox.get(to).push(m);
  }
  async join(p) {
    const s = new GroupSession(p, 'call-t', { user: `user-${p}` });
    this.sessions.set(p, s);
    const others = this.present.map((q) => ({ participant: q, user: `user-${q}` }));
    for (const q of this.present) this.deliver(q, { type: 'participant_joined', participant: { participant: p, user: `user-${p}` } });
    this.present.push(p);
    if (others.length === 0) this.epoch = 0;
    await this.handle(p, await s.start(this.now, others));
    return s;
  }
  leave(p) {
    this.present = this.present.filter((q) => q !== p);
    this.sessions.delete(p);
    for (const q of this.present) this.deliver(q, { type: 'participant_left', participant: p, reason: 'left' });
  }
  async handle(from, msgs) {
    for (const m of msgs) {
      if (m.type === 'mls_key_package') {
        for (const q of this.present) if (q !== from) this.deliver(q, { type: 'mls_key_package', from, blob: m.blob });
      } else if (m.type === 'mls_commit') {
        const raw = Uint8Array.from(atob(m.commit), (c) => c.charCodeAt(0));
        const msg = decodeMessage(raw);
        const epoch = Number((msg.publicMessage ?? msg.privateMessage).content?.epoch ?? (msg.publicMessage ?? msg.privateMessage).epoch);
        const ok = epoch === this.epoch;
        this.deliver(from, { type: 'mls_commit_result', epoch, accepted: ok });
        if (!ok) continue;
        this.epoch += 1;
        for (const q of this.present) if (q !== from) this.deliver(q, { type: 'mls_commit', from, epoch, commit: m.commit });
        if (m.welcome) for (const q of this.present) if (q !== from) this.deliver(q, { type: 'mls_welcome', from, welcome: m.welcome });
      }
    }
  }
  /** Deliver everything until quiet; `order` picks whose inbox goes first. */
  async run(order = null) {
    for (let i = 0; i < 1000; i++) {
      const who = (order ?? [...this.inbox.keys()]).find((p) => this.inbox.get(p)?.length);
      if (!who) return;
      const m = this.inbox.get(who).shift();
      const s = this.sessions.get(who);
      if (s) await this.handle(who, await s.onMessage(this.now, m));
    }
    assert.fail('did not settle');
  }
}

async function allOpen(ds) {
  for (const [p, s] of ds.sessions) {
    const sealed = await s.seal(new Uint8Array(0), new TextEncoder().encode(`from ${p}`));
    for (const [q, r] of ds.sessions) {
      if (q === p) continue;
      const o = await r.open(ds.now, new Uint8Array(0), sealed);
      assert.equal(o.from, p);
      assert.equal(new TextDecoder().decode(o.plaintext), `from ${p}`);
    }
  }
}

function oneCode(ds) {
  const sums = [...ds.sessions.values()].map((s) => s.summary());
  for (const x of sums) {
    assert.equal(x.code, sums[0].code);
    assert.deepEqual(x.members, sums[0].members);
    assert.equal(x.epoch, sums[0].epoch);
  }
  return sums[0];
}

test('three join, one leaves: one code and member list per epoch, frames open', async () => {
  const ds = new Ds();
  const a = await ds.join('p-a');
  assert.equal(a.epoch(), 0);
  assert.equal(a.keyed(), false);
  await ds.join('p-b');
  await ds.run();
  const s1 = oneCode(ds);
  assert.equal(s1.epoch, 1);
  assert.deepEqual(s1.members, ['user-p-a', 'user-p-b']);
  assert.match(s1.code, /^\d{5} \d{5} \d{5} \d{5}$/);
  await allOpen(ds);
  await ds.join('p-c');
  await ds.run();
  const s2 = oneCode(ds);
  assert.equal(s2.epoch, 2);
  assert.notEqual(s2.code, s1.code);
  await allOpen(ds);
  // b's frame sealed in epoch 2; b leaves; a removes it.
  const bFrame = await ds.sessions.get('p-b').seal(new Uint8Array(0), new Uint8Array([1]));
  ds.leave('p-b');
  await ds.run();
  const s3 = oneCode(ds);
  assert.equal(s3.epoch, 3);
  assert.deepEqual(s3.members, ['user-p-a', 'user-p-c']);
  assert.notEqual(s3.code, s2.code);
  await allOpen(ds);
  // The leaver's epoch-2 frame opens only within the grace period.
  ds.now += 2001;
  await assert.rejects(ds.sessions.get('p-c').open(ds.now, new Uint8Array(0), bFrame), OpenError);
  assert.equal(a.summary().key_packages_refused, 0);
});

test('two commits in one epoch: the loser applies the winner and retries', async () => {
  const ds = new Ds();
  await ds.join('p-a');
  await ds.join('p-b');
  await ds.run();
  assert.equal(ds.epoch, 1);
  await ds.join('p-c');
  // a commits the add of c (epoch 1, accepted) and leaves; b hears of a's leave before
  // a's commit, becomes the committer and commits the add of c and a's removal in epoch 1
  // too: the relay refuses it. b then applies a's commit and commits the removal alone.
  await ds.run(['p-a']);
  ds.leave('p-a');
  const inbox = ds.inbox.get('p-b');
  const left = inbox.findIndex((m) => m.type === 'participant_left');
  const commit = inbox.findIndex((m) => m.type === 'mls_commit');
  assert.ok(commit >= 0 && left > commit);
  inbox.splice(commit, 0, inbox.splice(left, 1)[0]);
  const results = [];
  const handle = ds.handle.bind(ds);
  ds.handle = async (from, msgs) => {
    for (const m of msgs) if (m.type === 'mls_commit') results.push(from);
    return handle(from, msgs);
  };
  const refusedBefore = [];
  const b = ds.sessions.get('p-b');
  const orig = b.onMessage.bind(b);
  b.onMessage = async (now, m) => {
    if (m.type === 'mls_commit_result') refusedBefore.push(m.accepted);
    return orig(now, m);
  };
  await ds.run(['p-b', 'p-c']);
  assert.deepEqual(refusedBefore, [false, true], 'b lost epoch 1, then won epoch 2');
  assert.deepEqual(results, ['p-b', 'p-b']);
  const s = oneCode(ds);
  assert.equal(s.epoch, 3);
  assert.deepEqual(s.members, ['user-p-b', 'user-p-c']);
  await allOpen(ds);
});

test('a KeyPackage from someone the relay never announced is refused and counted', async () => {
  const ds = new Ds();
  const a = await ds.join('p-a');
  const mallory = new GroupSession('p-x', 'call-t', { user: 'mallory' });
  const kp = await mallory.keyPackage();
  let blob = '';
  for (const b of kp) blob += String.fromCharCode(b);
  const out = await a.onMessage(0, { type: 'mls_key_package', from: 'p-x', blob: btoa(blob) });
  assert.deepEqual(out, []);
  assert.equal(a.summary().key_packages_refused, 1);
  assert.deepEqual(a.summary().key_packages_refused_by_reason, { unannounced: 1 });
  const bad = await a.onMessage(0, { type: 'mls_key_package', from: 'p-x', blob: 'not base64!' });
  assert.deepEqual(bad, []);
  assert.equal(a.summary().key_packages_refused, 2);
});

test('a frame of a coming epoch is held and opens when its commit arrives', async () => {
  const ds = new Ds();
  await ds.join('p-a');
  await ds.join('p-b');
  await ds.run();
  await ds.join('p-c');
  // Deliver to a and c first: a commits, c joins; b has not seen the commit yet.
  await ds.run(['p-a', 'p-c']);
  const a = ds.sessions.get('p-a');
  const b = ds.sessions.get('p-b');
  assert.equal(a.epoch(), 2);
  assert.equal(b.epoch(), 1);
  const early = await a.seal(new Uint8Array(0), new TextEncoder().encode('early'));
  await assert.rejects(b.open(ds.now, new Uint8Array(0), early), (e) => e.code === 'early');
  await ds.run();
  assert.equal(b.epoch(), 2);
  const opened = await b.openEarly(ds.now);
  assert.equal(opened.length, 1);
  assert.equal(opened[0].from, 'p-a');
  assert.equal(new TextDecoder().decode(opened[0].plaintext), 'early');
});

// The MLS web test's pages counted these as decrypt failures: a frame an existing member
// sealed before a joiner's Welcome reaches the joiner (media overtakes signalling). It
// was never meant for the joiner; open() says 'before_join' and the worker counts it as
// dropped before keys, as e2ee-client does, while a frame of its own epoch opens.
test('a frame sealed before this member joined is before_join, not a failure', async () => {
  const ds = new Ds();
  await ds.join('p-a');
  await ds.join('p-b');
  await ds.run();
  const a = ds.sessions.get('p-a');
  const old = await a.seal(new Uint8Array(0), new TextEncoder().encode('epoch 1'));
  await ds.join('p-c');
  await ds.run();
  const c = ds.sessions.get('p-c');
  assert.equal(c.epoch(), 2);
  await assert.rejects(c.open(ds.now, new Uint8Array(0), old, null, false), (e) => e instanceof OpenError && e.code === 'before_join');
  const fresh = await a.seal(new Uint8Array(0), new TextEncoder().encode('epoch 2'));
  assert.equal(new TextDecoder().decode((await c.open(ds.now, new Uint8Array(0), fresh)).plaintext), 'epoch 2');
});
