// Who may be in a group E2EE call's MLS group, checked by the page itself: the same rules
// as e2ee-client/src/roster.rs (read its module comment for why). The relay announces
// participants and delivers KeyPackages "from" them, but the relay is the adversary, so
// every credential that would enter the group is checked against what it announced:
// - a KeyPackage's identity names the participant the relay said sent it; a commit's adds
//   and a Welcome's roster name participants announced at some point;
// - the user name in it is the one announced for that participant;
// - no participant and no signature key appears twice in the group;
// - with an issuer check, its token must verify (the check is supplied by the caller).
// A credential's identity is the JSON `{"participant","user","token"?}` (MemberIdentity).

/** Most participants remembered as "announced at some point" (as MAX_ANNOUNCED). */
export const MAX_ANNOUNCED = 4096;
/** Longest credential identity accepted (as MAX_IDENTITY_BYTES). */
export const MAX_IDENTITY_BYTES = 8 * 1024;

const dec = new TextDecoder('utf-8', { fatal: true });
const enc = new TextEncoder();

/** Why a credential may not enter the group; `reason` is roster.rs's Refusal::reason. */
export class Refusal extends Error {
  constructor(reason, message) {
    super(message);
    this.name = 'Refusal';
    this.reason = reason;
  }
}

/** The credential identity bytes for a member (what the page puts in its KeyPackage). */
export function identityBytes({ participant, user, token }) {
  const o = { participant, user };
  if (token !== undefined && token !== null) o.token = token;
  return enc.encode(JSON.stringify(o));
}

/** Parse a credential's identity bytes: {participant, user, token?} or a Refusal. */
export function parseIdentity(bytes) {
  if (bytes.length > MAX_IDENTITY_BYTES) throw new Refusal('bad_credential', 'identity too long');
  let v;
  try {
    v = JSON.parse(dec.decode(bytes));
  } catch (e) {
    throw new Refusal('bad_credential', `not a member identity: ${e.message}`);
  }
  if (v === null || typeof v !== 'object' || Array.isArray(v)
      || typeof v.participant !== 'string' || typeof v.user !== 'string'
      || (v.token !== undefined && v.token !== null && typeof v.token !== 'string')) {
    throw new Refusal('bad_credential', 'not a member identity');
  }
  return { participant: v.participant, user: v.user, token: v.token ?? undefined };
}

function sameBytes(a, b) {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** The participants the relay announced to this member, and the rules above. */
export class Roster {
  /** `check(identity, signatureKey)` returns an error string or null (an issuer check). */
  constructor(me, user, check = null) {
    this.me = me;
    this.present = new Map();
    this.announced = new Map(); // participant -> { seq, user }
    this.nextSeq = 0;
    this.verify = check;
    this.joined(me, user);
  }

  /** The relay announced `participant` (as `user`) in the call. */
  joined(participant, user) {
    this.present.set(participant, user);
    this.nextSeq += 1;
    this.announced.delete(participant);
    this.announced.set(participant, { seq: this.nextSeq, user });
    if (this.announced.size > MAX_ANNOUNCED) {
      let oldest = null;
      for (const [p, a] of this.announced) {
        if (this.present.has(p)) continue;
        if (oldest === null || a.seq < oldest[1]) oldest = [p, a.seq];
      }
      if (oldest) this.announced.delete(oldest[0]);
    }
  }

  /** The relay said `participant` left. */
  left(participant) {
    if (participant !== this.me) this.present.delete(participant);
  }

  isPresent(participant) {
    return this.present.has(participant);
  }

  /**
   * Check one credential ({identity: bytes, signatureKey: bytes}); `from` is the participant
   * the relay said sent it (a KeyPackage), null for one inside a commit or a Welcome.
   */
  check(c, from = null) {
    const id = parseIdentity(c.identity);
    if (from !== null) {
      if (!this.announced.has(from)) throw new Refusal('unannounced', `\`${from}\` was never announced`);
      if (id.participant !== from) {
        throw new Refusal('not_the_sender', `the credential names \`${id.participant}\`, but the relay said it came from \`${from}\``);
      }
    }
    const a = this.announced.get(id.participant);
    if (!a) throw new Refusal('unannounced', `\`${id.participant}\` was never announced`);
    if (a.user !== id.user) {
      throw new Refusal('user_mismatch', `the credential names user \`${id.user}\`, but \`${id.participant}\` was announced as \`${a.user}\``);
    }
    if (this.verify) {
      const err = this.verify(id, c.signatureKey);
      if (err) throw new Refusal('unverified', `the credential's token does not check out: ${err}`);
    }
    return id;
  }

  /** Check a whole group: every credential passes check(), no participant or key repeats. */
  checkAll(all) {
    const out = [];
    const keys = [];
    for (const c of all) {
      const id = this.check(c, null);
      if (out.some((o) => o.participant === id.participant)) {
        throw new Refusal('duplicate', `\`${id.participant}\` appears twice`);
      }
      if (keys.some((k) => sameBytes(k, c.signatureKey))) {
        throw new Refusal('duplicate_key', 'the signature key is already in the group');
      }
      keys.push(c.signatureKey);
      out.push(id);
    }
    return out;
  }
}
