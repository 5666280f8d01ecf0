// Group E2EE keys from MLS (RFC 9420) in the page, through ts-mls (web/mls.bundle.js), in
// one group with e2ee-client's openmls members (e2ee-client/src/mls.rs is the reference:
// every constant and derivation here must match it; web/test/mls.test.mjs checks them
// against a group openmls made).
// - ciphersuite MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519, BasicCredential whose identity
//   is the JSON `{participant,user,token?}` (web/roster.js checks it);
// - base_key = MLS-Exporter("SFrame 1.0 Base Key", "", 16) per epoch; a sender's KID is
//   (leaf << EPOCH_BITS) | (epoch mod 2^EPOCH_BITS), and its SFrame key and salt come from
//   base_key and that KID (RFC 9605 §5.2, web/sframe.js deriveKey);
// - the 20-digit group code is SHA-256(CODE_LABEL || epoch_authenticator)[..16] mod 10^20.
// This module runs in the worker: epoch secrets and keys never leave it.

import {
  acceptAll,
  createCommit,
  createGroup,
  decodeMlsMessage,
  defaultCapabilities,
  defaultLifetime,
  emptyPskIndex,
  encodeMlsMessage,
  generateKeyPackage,
  getCiphersuiteFromName,
  getCiphersuiteImpl,
  joinGroup,
  mlsExporter,
  processMessage,
} from './mls.bundle.js';
import { codeDigits, formatCode } from './kex.js';

export const CIPHERSUITE = 'MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519';
export const EPOCH_BITS = 8;
export const EXPORTER_LABEL = 'SFrame 1.0 Base Key';
export const CODE_LABEL = 'blindrelay group verification code v1';
/** How long the previous epoch's keys still open frames after a commit (as mls.rs). */
export const PREVIOUS_EPOCH_GRACE_MS = 2000;

const enc = new TextEncoder();
const dec = new TextDecoder();

export class MlsError extends Error {
  constructor(code, message) {
    super(message);
    this.name = 'MlsError';
    this.code = code;
  }
}

let implPromise;
/** The ciphersuite's implementation (WebCrypto + noble), made once. */
export function suite() {
  implPromise ??= getCiphersuiteImpl(getCiphersuiteFromName(CIPHERSUITE));
  return implPromise;
}

/** The KID a member sends with in an epoch (epoch: bigint or number). */
export function kid(epoch, leaf) {
  const mask = (1n << BigInt(EPOCH_BITS)) - 1n;
  return (BigInt(leaf) << BigInt(EPOCH_BITS)) | (BigInt(epoch) & mask);
}

/** The sender's leaf index in a KID. */
export function leafOfKid(k) {
  return Number(BigInt(k) >> BigInt(EPOCH_BITS));
}

/** The group code's 20 digits for an epoch authenticator. */
export async function codeOf(authenticator) {
  const data = new Uint8Array([...enc.encode(CODE_LABEL), ...authenticator]);
  const digest = new Uint8Array(await globalThis.crypto.subtle.digest('SHA-256', data));
  return codeDigits(digest.subarray(0, 16));
}

export { formatCode };

/** Decode an MLSMessage, which must be of `wireformat` (e.g. 'mls_welcome'). */
export function decodeMessage(bytes, wireformat) {
  let decoded;
  try {
    decoded = decodeMlsMessage(bytes, 0);
  } catch (e) {
    throw new MlsError('mls_malformed', `not an MLS message: ${e.message}`);
  }
  const msg = decoded?.[0];
  if (!msg || (wireformat && msg.wireformat !== wireformat)) {
    throw new MlsError('mls_unexpected', `expected ${wireformat}`);
  }
  return msg;
}

/** Every member of a state's tree: leaf index, credential identity bytes and signature key. */
export function members(state) {
  const out = [];
  state.ratchetTree.forEach((node, i) => {
    if (i % 2 !== 0 || !node || node.nodeType !== 'leaf') return;
    const cred = node.leaf.credential;
    out.push({
      leaf: i / 2,
      identity: cred.credentialType === 'basic' ? cred.identity : new Uint8Array(0),
      signatureKey: node.leaf.signaturePublicKey,
    });
  });
  return out;
}

/** The epoch's SFrame base key (RFC 9605 §5.2). */
export async function sframeBaseKey(state) {
  return mlsExporter(state.keySchedule.exporterSecret, EXPORTER_LABEL, new Uint8Array(0), 16, await suite());
}

/** The epoch number (a Number: epochs stay far below 2^53). */
export function epochOf(state) {
  return Number(state.groupContext.epoch);
}

/** This member's leaf index. */
export function ownLeaf(state) {
  const own = state.privatePath?.leafIndex;
  if (own !== undefined) return Number(own);
  throw new MlsError('mls_state', 'no own leaf');
}

/** The verification code of a state's epoch. */
export async function stateCode(state) {
  return codeOf(state.keySchedule.epochAuthenticator);
}

export { dec as textDecoder, enc as textEncoder };
export {
  acceptAll, createCommit, createGroup, defaultCapabilities, defaultLifetime, emptyPskIndex,
  encodeMlsMessage, generateKeyPackage, joinGroup, processMessage,
};
