// The page's side of a group E2EE call (scheme `mls`): e2ee-client/src/group.rs in
// JavaScript, over ts-mls (web/mls.js). A sans-IO session: it takes the relay's MLS
// messages and participant events (with `now`, in ms, so tests drive a virtual clock) and
// returns the signalling messages to send back; it keeps the SFrame keys of the current
// epoch and, for PREVIOUS_EPOCH_GRACE_MS, of the one before. It runs in the worker: no
// secret leaves it; `summary()` is what the main thread may show.
//
// Who commits: the member with the lowest leaf among those still in the call adds every
// waiting joiner and removes every member whose participant is not in the call, in one
// commit. The relay accepts the first commit per epoch; a member whose commit lost drops
// it, applies the winner's and commits again on the new epoch if work is left.
// Nothing the relay says about members is taken on its word (web/roster.js).

import {
  MlsError, PREVIOUS_EPOCH_GRACE_MS, acceptAll, codeOf, createCommit, createGroup, decodeMessage,
  defaultCapabilities, defaultLifetime, emptyPskIndex, encodeMlsMessage, epochOf, formatCode,
  generateKeyPackage, joinGroup, kid, leafOfKid, members, ownLeaf, processMessage, sframeBaseKey,
  suite, EPOCH_BITS,
} from './mls.js';
import { Roster, Refusal, identityBytes, parseIdentity } from './roster.js';
import { SframeSender, SframeReceiver, SframeError, decodeHeader } from './sframe.js';

/** At most this many early frames are kept, each at most EARLY_FRAME_WAIT_MS. */
export const EARLY_FRAMES = 512;
export const EARLY_FRAME_WAIT_MS = 2000;
/** At most this many KeyPackages wait to be committed. */
export const MAX_WAITING = 1024;

export function b64encode(bytes) {
  let s = '';
  for (const b of bytes) s += String.fromCharCode(b);
  return btoa(s);
}

export function b64decode(text) {
  if (typeof text !== 'string') throw new MlsError('base64', 'blob is not base64');
  let raw;
  try { raw = atob(text); } catch { throw new MlsError('base64', 'blob is not base64'); }
  return Uint8Array.from(raw, (c) => c.charCodeAt(0));
}

function sameBytes(a, b) {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** Credentials of a KeyPackage's leaf: {identity, signatureKey}. */
function candidateOfKeyPackage(kp) {
  const cred = kp.leafNode.credential;
  return {
    identity: cred.credentialType === 'basic' ? cred.identity : new Uint8Array(0),
    signatureKey: kp.leafNode.signaturePublicKey,
  };
}

/** SFrame keys across epochs (e2ee-client's GroupFrames): sender of the newest epoch,
 * receivers of the newest plus, for the grace period, the previous one. */
export class GroupFrames {
  constructor() {
    this.sender = null;
    this.receivers = new Map(); // kid (bigint) -> SframeReceiver
    this.epoch = null;
    this.current = [];
    this.retiring = []; // [deadline ms, kids[]]
  }

  async install(now, epoch, ownLeafIndex, otherLeaves, baseKey) {
    this.expire(now);
    if (this.epoch === epoch) return;
    if (this.current.length) this.retiring.push([now + PREVIOUS_EPOCH_GRACE_MS, this.current]);
    this.current = [];
    for (const leaf of otherLeaves) {
      const k = kid(epoch, leaf);
      for (const r of this.retiring) r[1] = r[1].filter((x) => x !== k);
      this.receivers.set(k, await SframeReceiver.create(baseKey, k));
      this.current.push(k);
    }
    this.sender = await SframeSender.create(baseKey, kid(epoch, ownLeafIndex));
    this.epoch = epoch;
  }

  expire(now) {
    while (this.retiring.length && this.retiring[0][0] <= now) {
      for (const k of this.retiring.shift()[1]) this.receivers.delete(k);
    }
  }

  clear() {
    this.receivers.clear();
    this.current = [];
    this.retiring = [];
    this.sender = null;
    this.epoch = null;
  }
}

/** Why a frame did not open: 'before_join', 'early' (kept), or an SframeError's code. */
export class OpenError extends Error {
  constructor(code, message) {
    super(message);
    this.name = 'OpenError';
    this.code = code;
  }
}

/** One participant's group state. */
export class GroupSession {
  /** `me`: participant id; `call`: call id; `user`: the user its token names. */
  constructor(me, call, { user, token } = {}) {
    this.me = me;
    this.call = call;
    this.user = user;
    this.identity = identityBytes({ participant: me, user, token });
    this.roster = new Roster(me, user);
    this.frames = new GroupFrames();
    this.state = null;
    this.pending = null; // our commit's result while the relay judges it
    this.inFlight = false;
    this.waiting = new Map(); // participant -> { kp (decoded), raw, signatureKey }
    this.leafOwner = new Map();
    this.firstEpoch = null;
    this.early = []; // [at, meta, sealed, kind]
    this.earlyExpired = 0;
    this.keyPackagesRefused = {};
    this.refused = null;
    this.epochsInstalled = 0;
    this.kp = null;
  }

  async keyPackage() {
    const impl = await suite();
    this.kp = await generateKeyPackage({ credentialType: 'basic', identity: this.identity },
      defaultCapabilities(), defaultLifetime, [], impl);
    return encodeMlsMessage({ keyPackage: this.kp.publicPackage, wireformat: 'mls_key_package', version: 'mls10' });
  }

  /** After `joined`: the first participant creates the group; a later one publishes its
   * KeyPackage and waits for a Welcome. */
  async start(now, participants) {
    for (const p of participants) this.roster.joined(p.participant, p.user);
    if (participants.length === 0) {
      await this.create(now);
      return [];
    }
    return [{ type: 'mls_key_package', blob: b64encode(await this.keyPackage()) }];
  }

  async create(now) {
    const impl = await suite();
    if (!this.kp) await this.keyPackage();
    const rand = new Uint8Array(8);
    globalThis.crypto.getRandomValues(rand);
    const id = `${this.call}/${Array.from(rand, (b) => b.toString(16).padStart(2, '0')).join('')}`;
    this.state = await createGroup(new TextEncoder().encode(id), this.kp.publicPackage, this.kp.privatePackage, [], impl);
    this.frames.clear();
    this.firstEpoch = null;
    this.inFlight = false;
    this.pending = null;
    await this.installed(now);
  }

  async installed(now) {
    const present = [];
    const ms = members(this.state);
    for (const m of ms) {
      let who = '';
      try { who = parseIdentity(m.identity).participant; } catch { /* unnamed: shown as such */ }
      this.leafOwner.set(m.leaf, who);
      present.push(who);
    }
    const own = ownLeaf(this.state);
    const epoch = epochOf(this.state);
    const base = await sframeBaseKey(this.state);
    await this.frames.install(now, epoch, own, ms.map((m) => m.leaf).filter((l) => l !== own), base);
    base.fill(0);
    this.epochsInstalled += 1;
    if (this.firstEpoch === null) this.firstEpoch = epoch;
    for (const p of present) this.waiting.delete(p);
    this.code = await codeOf(this.state.keySchedule.epochAuthenticator);
  }

  refuseKeyPackage(r) {
    this.keyPackagesRefused[r.reason] = (this.keyPackagesRefused[r.reason] ?? 0) + 1;
  }

  checkKeyPackage(from, kp) {
    const c = candidateOfKeyPackage(kp);
    this.roster.check(c, from);
    if (!this.roster.isPresent(from)) throw new Refusal('not_in_call', `\`${from}\` is not in the call any more`);
    const ms = this.state ? members(this.state) : [];
    for (const m of ms) {
      let named = null;
      try { named = parseIdentity(m.identity).participant; } catch { /* not a name */ }
      if (named === from) throw new Refusal('already_member', `\`${from}\` is already a member of the group`);
    }
    const taken = ms.some((m) => sameBytes(m.signatureKey, c.signatureKey))
      || (this.kp && sameBytes(this.kp.publicPackage.leafNode.signaturePublicKey, c.signatureKey))
      || [...this.waiting].some(([p, w]) => p !== from && sameBytes(w.signatureKey, c.signatureKey));
    if (taken) throw new Refusal('duplicate_key', 'the signature key is already in the group');
    return c.signatureKey;
  }

  refuseGroup(r) {
    this.state = null;
    this.frames.clear();
    this.waiting.clear();
    this.inFlight = false;
    this.pending = null;
    this.refused = r;
  }

  inGroup() {
    return this.state !== null;
  }

  /** Handle one message from the relay; returns the messages to send. */
  async onMessage(now, msg) {
    const out = [];
    if (this.refused) return out;
    const impl = await suite();
    switch (msg.type) {
      case 'participant_joined':
        this.roster.joined(msg.participant.participant, msg.participant.user);
        break;
      case 'participant_left':
        this.waiting.delete(msg.participant);
        this.roster.left(msg.participant);
        break;
      case 'mls_key_package': {
        let kp;
        try {
          kp = decodeMessage(b64decode(msg.blob), 'mls_key_package').keyPackage;
          if (kp.cipherSuite !== undefined && kp.cipherSuite !== 1 && kp.cipherSuite !== 'MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519') {
            throw new Refusal('invalid', 'KeyPackage of another ciphersuite');
          }
        } catch (e) {
          this.refuseKeyPackage(e instanceof Refusal ? e : new Refusal('invalid', e.message));
          return out;
        }
        try {
          const key = this.checkKeyPackage(msg.from, kp);
          if (this.waiting.size < MAX_WAITING || this.waiting.has(msg.from)) {
            this.waiting.set(msg.from, { kp, signatureKey: key });
          } else {
            this.refuseKeyPackage(new Refusal('invalid', 'too many waiting'));
          }
        } catch (e) {
          if (!(e instanceof Refusal)) throw e;
          this.refuseKeyPackage(e);
        }
        break;
      }
      case 'mls_commit': {
        // Commits before this member's epoch (or before it joined) are not for it.
        if (!this.state || msg.epoch < epochOf(this.state)) return out;
        if (this.inFlight) this.pending = null; // another commit won this epoch
        const m = decodeMessage(b64decode(msg.commit));
        let refusal = null;
        const check = (incoming) => {
          if (incoming.kind !== 'commit') return 'reject';
          const removed = new Set(incoming.proposals
            .filter((p) => p.proposal.proposalType === 'remove').map((p) => p.proposal.remove.removed));
          const after = members(this.state).filter((x) => !removed.has(x.leaf))
            .concat(incoming.proposals.filter((p) => p.proposal.proposalType === 'add')
              .map((p) => candidateOfKeyPackage(p.proposal.add.keyPackage)));
          if (removed.has(ownLeaf(this.state))) return 'accept';
          try {
            this.roster.checkAll(after);
            return 'accept';
          } catch (e) {
            if (!(e instanceof Refusal)) throw e;
            refusal = e;
            return 'reject';
          }
        };
        const r = await processMessage(m, this.state, emptyPskIndex, check, impl);
        if (refusal) { this.refuseGroup(refusal); return out; }
        if (r.kind !== 'newState') throw new MlsError('mls_unexpected', 'not a commit');
        if (r.newState.groupActiveState?.kind === 'removedFromGroup') {
          this.state = null;
          this.frames.clear();
          this.removed = true;
          return out;
        }
        this.state = r.newState;
        await this.installed(now);
        break;
      }
      case 'mls_commit_result': {
        if (!this.inFlight) return out;
        this.inFlight = false;
        if (msg.accepted && this.pending) {
          this.state = this.pending.newState;
          await this.installed(now);
        }
        this.pending = null;
        break;
      }
      case 'mls_welcome': {
        if (this.state) return out;
        const w = decodeMessage(b64decode(msg.welcome), 'mls_welcome').welcome;
        let joined;
        try {
          joined = await joinGroup(w, this.kp.publicPackage, this.kp.privatePackage, emptyPskIndex, impl);
        } catch {
          return out; // not this participant's Welcome: keep waiting for its own
        }
        try {
          this.roster.checkAll(members(joined));
        } catch (e) {
          if (!(e instanceof Refusal)) throw e;
          this.refuseGroup(e);
          return out;
        }
        this.state = joined;
        await this.installed(now);
        out.push({ type: 'mls_joined', epoch: epochOf(this.state) });
        break;
      }
      case 'mls_create':
        await this.create(now);
        break;
      default:
        return out;
    }
    const c = await this.maybeCommit();
    if (c) out.push(c);
    return out;
  }

  /** Commit the waiting adds and removals if this member is the committer. */
  async maybeCommit() {
    if (this.inFlight || !this.state) return null;
    const ms = members(this.state);
    const inCall = (m) => {
      try { return this.roster.isPresent(parseIdentity(m.identity).participant); } catch { return false; }
    };
    const committer = Math.min(...ms.filter(inCall).map((m) => m.leaf));
    if (committer !== ownLeaf(this.state)) return null;
    const remove = ms.filter((m) => !inCall(m)).map((m) => m.leaf);
    const adds = [...this.waiting.values()].map((w) => w.kp);
    if (adds.length === 0 && remove.length === 0) return null;
    const impl = await suite();
    const proposals = (a) => [
      ...a.map((keyPackage) => ({ proposalType: 'add', add: { keyPackage } })),
      ...remove.map((removed) => ({ proposalType: 'remove', remove: { removed } })),
    ];
    let res;
    try {
      res = await createCommit({ state: this.state, cipherSuite: impl },
        { extraProposals: proposals(adds), ratchetTreeExtension: true });
    } catch (e) {
      if (adds.length === 0) throw e;
      for (const _ of this.waiting) this.refuseKeyPackage(new Refusal('invalid', String(e.message)));
      this.waiting.clear();
      if (remove.length === 0) return null;
      res = await createCommit({ state: this.state, cipherSuite: impl },
        { extraProposals: proposals([]), ratchetTreeExtension: true });
    }
    this.pending = res;
    this.inFlight = true;
    const msg = { type: 'mls_commit', commit: b64encode(encodeMlsMessage(res.commit)) };
    if (res.welcome) msg.welcome = b64encode(encodeMlsMessage({ welcome: res.welcome, wireformat: 'mls_welcome', version: 'mls10' }));
    return msg;
  }

  /** Keys exist and someone else is in the group. */
  keyed() {
    return this.frames.epoch !== null && this.state !== null && members(this.state).length >= 2;
  }

  epoch() {
    return this.state ? epochOf(this.state) : null;
  }

  /** What the main thread may show: no secret in it. */
  summary() {
    const names = [];
    const participants = [];
    if (this.state) {
      for (const m of members(this.state)) {
        try {
          const id = parseIdentity(m.identity);
          names.push(id.user);
          participants.push(id.participant);
        } catch { names.push('?'); }
      }
    }
    names.sort();
    return {
      epoch: this.epoch(),
      code: this.state && this.code ? formatCode(this.code) : null,
      members: names,
      participants,
      keyed: this.keyed(),
      key_packages_refused: Object.values(this.keyPackagesRefused).reduce((a, b) => a + b, 0),
      key_packages_refused_by_reason: { ...this.keyPackagesRefused },
      refused: this.refused ? this.refused.reason : null,
      removed: !!this.removed,
      early_expired: this.earlyExpired,
      // How many superseded epochs' receive keys are still held (their grace period has
      // not ended): 0 means only the current epoch's frames can open. A count, not keys.
      previous_epoch_keys: this.frames.retiring.length,
    };
  }

  /** Seal with the current epoch's key. */
  async seal(metadata, plaintext) {
    if (!this.frames.sender) throw new OpenError('no_keys', 'no keys yet');
    return this.frames.sender.seal(metadata, plaintext);
  }

  /** Open a frame: {from: participant|null, plaintext}; an OpenError says why not
   * ('early': kept until its epoch's commit arrives, see openEarly). */
  async open(now, metadata, sealed, tag = null, hold = true) {
    this.frames.expire(now);
    const h = decodeHeader(sealed);
    const r = this.frames.receivers.get(h.kid);
    if (!r) {
      const mask = (1n << BigInt(EPOCH_BITS)) - 1n;
      const e = h.kid & mask;
      const cur = this.epoch();
      const behind = this.firstEpoch === null ? null : (BigInt(this.firstEpoch) - e) & mask;
      const ahead = cur === null ? null : (e - BigInt(cur)) & mask;
      if (behind !== null && behind >= 1n && behind <= 128n) throw new OpenError('before_join', `frame of epoch ${e} (mod 256), before this member joined`);
      if (ahead !== null && ahead >= 1n && ahead <= 128n) {
        if (!hold) throw new OpenError('early', 'frame of a coming epoch');
        if (this.early.length === EARLY_FRAMES) { this.early.shift(); this.earlyExpired++; }
        this.early.push([now, metadata, sealed, tag]);
        throw new OpenError('early', 'frame of a coming epoch: kept until its commit arrives');
      }
      throw new OpenError('unknown_kid', `no key for KID ${h.kid}`);
    }
    const { plaintext } = await r.open(metadata, sealed);
    return { from: this.leafOwner.get(leafOfKid(h.kid)) ?? null, plaintext };
  }

  /** Open the early frames whose epoch has come: [{from, plaintext, tag}]; those kept
   * longer than EARLY_FRAME_WAIT_MS are given up (earlyExpired). */
  async openEarly(now) {
    const opened = [];
    const keep = [];
    const all = this.early;
    this.early = [];
    for (const [at, meta, sealed, tag] of all) {
      try {
        const o = await this.open(now, meta, sealed, tag);
        opened.push({ ...o, tag });
      } catch (e) {
        if (e instanceof OpenError && e.code === 'early') {
          this.early.pop();
          if (now - at < EARLY_FRAME_WAIT_MS) keep.push([at, meta, sealed, tag]);
          else this.earlyExpired++;
        } else {
          this.earlyExpired++;
        }
      }
    }
    this.early = keep;
    return opened;
  }
}

export { SframeError };
