//! The receiving side: keys by KID, a replay window per KID, and sender-key ratchets.

use core::fmt;
use std::collections::{HashMap, VecDeque};

use super::{
    error::SframeError,
    frame::{FrameKey, OpenedFrame},
    header::Header,
    kdf::{ratchet_base_key, SecretBytes},
    ratchet::RatchetParams,
    replay::ReplayWindow,
    suite::CipherSuite,
};

/// Default cap on ratchet steps taken to reach an unknown KID of a known ratcheting sender.
/// Each step costs two HKDF calls and is attempted before the frame is authenticated, so the
/// cap bounds the work a forged frame can cause.
pub const DEFAULT_MAX_RATCHET_JUMP: u64 = 16;

/// Default number of ratchet steps per sender whose keys stay installed (the newest plus one
/// older step for frames reordered across a ratchet).
pub const DEFAULT_RATCHET_RETENTION: usize = 2;

struct ReceiverKey {
    key: FrameKey,
    window: ReplayWindow,
}

/// Ratchet state of one sender key generation.
struct RatchetChain {
    suite: CipherSuite,
    params: RatchetParams,
    generation: u64,
    /// Newest KID of this chain; `base_key` belongs to it.
    current_kid: u64,
    base_key: SecretBytes,
    /// Installed KIDs of this chain, oldest first.
    live: VecDeque<u64>,
}

/// A key derived by ratcheting, not installed until a frame authenticates under it.
struct RatchetCandidate {
    chain: usize,
    base_key: SecretBytes,
    key: FrameKey,
}

enum Resolved {
    Installed,
    Ratchet(Box<RatchetCandidate>),
}

/// Unprotects incoming frames.
///
/// Keys are looked up by the KID in the frame header. A frame is accepted only if it
/// authenticates and its CTR passes that KID's replay window ([`SframeError::Replay`] for a
/// repeat, [`SframeError::TooOld`] for a CTR behind the window). The window is updated only
/// after authentication, so forged frames cannot advance or poison it.
///
/// Senders using the RFC 9605 §5.1 ratchet are registered with
/// [`Self::add_ratcheting_key`]; a frame whose KID is a later step of such a sender makes
/// the receiver ratchet forward, but the new key is kept only if the frame authenticates.
pub struct Receiver {
    keys: HashMap<u64, ReceiverKey>,
    chains: Vec<RatchetChain>,
    /// Empty window of the configured size, cloned for every new key.
    empty_window: ReplayWindow,
    max_ratchet_jump: u64,
    ratchet_retention: usize,
    scratch: Vec<u8>,
}

impl fmt::Debug for Receiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut kids: Vec<u64> = self.keys.keys().copied().collect();
        kids.sort_unstable();
        f.debug_struct("Receiver")
            .field("kids", &kids)
            .field("ratchet_chains", &self.chains.len())
            .field("window_size", &self.empty_window.size())
            .finish_non_exhaustive()
    }
}

impl Default for Receiver {
    fn default() -> Self {
        Self::new()
    }
}

impl Receiver {
    /// A receiver with the default replay window
    /// ([`super::DEFAULT_REPLAY_WINDOW`] frames).
    pub fn new() -> Self {
        Self {
            keys: HashMap::new(),
            chains: Vec::new(),
            empty_window: ReplayWindow::default(),
            max_ratchet_jump: DEFAULT_MAX_RATCHET_JUMP,
            ratchet_retention: DEFAULT_RATCHET_RETENTION,
            scratch: Vec::new(),
        }
    }

    /// A receiver whose per-KID replay windows span `size` frames
    /// (`1..=`[`super::MAX_REPLAY_WINDOW`]).
    pub fn with_replay_window(size: u64) -> Result<Self, SframeError> {
        Ok(Self {
            empty_window: ReplayWindow::new(size)?,
            ..Self::new()
        })
    }

    /// Sets how many ratchet steps one frame may move a sender forward (at least 1).
    pub fn set_max_ratchet_jump(&mut self, steps: u64) {
        self.max_ratchet_jump = steps.max(1);
    }

    /// Sets how many ratchet steps per sender stay installed (at least 1: the newest).
    pub fn set_ratchet_retention(&mut self, steps: usize) {
        self.ratchet_retention = steps.max(1);
    }

    fn new_window(&self) -> ReplayWindow {
        self.empty_window.clone()
    }

    /// Installs (or replaces, resetting its replay window) the key for `kid`.
    pub fn add_key(&mut self, suite: CipherSuite, kid: u64, base_key: &[u8]) {
        let window = self.new_window();
        self.keys.insert(
            kid,
            ReceiverKey {
                key: FrameKey::new(suite, kid, base_key),
                window,
            },
        );
    }

    /// Removes the key for `kid`; returns whether one was installed.
    pub fn remove_key(&mut self, kid: u64) -> bool {
        self.keys.remove(&kid).is_some()
    }

    /// Whether a key for `kid` is installed.
    pub fn has_key(&self, kid: u64) -> bool {
        self.keys.contains_key(&kid)
    }

    /// Registers a ratcheting sender whose current KID is `kid` and base key `base_key`.
    ///
    /// Replaces any chain of the same key generation. Later ratchet steps of this generation
    /// are derived on demand when their frames arrive.
    pub fn add_ratcheting_key(
        &mut self,
        suite: CipherSuite,
        params: RatchetParams,
        kid: u64,
        base_key: &[u8],
    ) {
        let generation = params.generation(kid);
        if let Some(pos) = self
            .chains
            .iter()
            .position(|c| c.params == params && c.generation == generation)
        {
            let old = self.chains.remove(pos);
            for k in old.live {
                self.keys.remove(&k);
            }
        }
        self.add_key(suite, kid, base_key);
        self.chains.push(RatchetChain {
            suite,
            params,
            generation,
            current_kid: kid,
            base_key: SecretBytes::from_slice(base_key),
            live: VecDeque::from([kid]),
        });
    }

    /// Finds the key for `header`, checking the replay window, or prepares a ratchet step.
    fn resolve(&self, header: Header) -> Result<Resolved, SframeError> {
        if let Some(entry) = self.keys.get(&header.kid) {
            entry.window.check(header.kid, header.ctr)?;
            return Ok(Resolved::Installed);
        }
        let kid = header.kid;
        let Some((idx, chain)) = self
            .chains
            .iter()
            .enumerate()
            .find(|(_, c)| c.params.generation(kid) == c.generation)
        else {
            return Err(SframeError::UnknownKid { kid });
        };
        let steps = chain.params.steps_between(chain.current_kid, kid);
        if steps == 0 {
            // The chain's current KID was removed by the application.
            return Err(SframeError::UnknownKid { kid });
        }
        if steps > self.max_ratchet_jump {
            return Err(SframeError::RatchetJumpTooLarge {
                kid,
                steps,
                max: self.max_ratchet_jump,
            });
        }
        let mut base_key = ratchet_base_key(chain.suite, chain.base_key.expose_secret());
        for _ in 1..steps {
            base_key = ratchet_base_key(chain.suite, base_key.expose_secret());
        }
        let key = FrameKey::new(chain.suite, kid, base_key.expose_secret());
        Ok(Resolved::Ratchet(Box::new(RatchetCandidate {
            chain: idx,
            base_key,
            key,
        })))
    }

    /// Installs a ratcheted key whose first frame (`ctr`) authenticated.
    fn commit_ratchet(&mut self, cand: RatchetCandidate, ctr: u64) {
        let kid = cand.key.kid();
        let mut window = self.new_window();
        window.mark(ctr);
        self.keys.insert(
            kid,
            ReceiverKey {
                key: cand.key,
                window,
            },
        );
        let Some(chain) = self.chains.get_mut(cand.chain) else {
            return;
        };
        chain.current_kid = kid;
        chain.base_key = cand.base_key;
        chain.live.push_back(kid);
        while chain.live.len() > self.ratchet_retention {
            if let Some(old) = chain.live.pop_front() {
                self.keys.remove(&old);
            }
        }
    }

    /// Verifies and decrypts `body` for `header`, updating replay/ratchet state on success.
    fn open_parts(
        &mut self,
        header: Header,
        resolved: Resolved,
        header_bytes: &[u8],
        metadata: &[u8],
        body: &mut [u8],
        tag: &[u8],
    ) -> Result<(), SframeError> {
        match resolved {
            Resolved::Installed => {
                let entry = self
                    .keys
                    .get_mut(&header.kid)
                    .ok_or(SframeError::UnknownKid { kid: header.kid })?;
                entry.key.open_parts(
                    header.ctr,
                    header_bytes,
                    metadata,
                    body,
                    tag,
                    &mut self.scratch,
                )?;
                entry.window.mark(header.ctr);
            }
            Resolved::Ratchet(cand) => {
                cand.key.open_parts(
                    header.ctr,
                    header_bytes,
                    metadata,
                    body,
                    tag,
                    &mut self.scratch,
                )?;
                self.commit_ratchet(*cand, header.ctr);
            }
        }
        Ok(())
    }

    fn tag_len(&self, header: Header, resolved: &Resolved) -> usize {
        match resolved {
            Resolved::Installed => self.keys.get(&header.kid).map_or(0, |e| e.key.tag_len()),
            Resolved::Ratchet(c) => c.key.tag_len(),
        }
    }

    /// Opens an SFrame ciphertext in place.
    ///
    /// On success the plaintext is at `buf[opened.plaintext]` (right after the header). On
    /// failure no receiver state changes and `buf` never holds unauthenticated plaintext (it
    /// is unchanged, or its ciphertext part zeroed for AES-GCM). No allocation on this path
    /// except when a ratchet step is taken.
    pub fn open_in_place(
        &mut self,
        metadata: &[u8],
        buf: &mut [u8],
    ) -> Result<OpenedFrame, SframeError> {
        let (header, hlen) = Header::decode(buf)?;
        let resolved = self.resolve(header)?;
        let nt = self.tag_len(header, &resolved);
        let after_header = buf.len() - hlen;
        let body_len = after_header
            .checked_sub(nt)
            .ok_or(SframeError::CiphertextTooShort {
                len: after_header,
                tag_len: nt,
            })?;
        let (head, rest) = buf.split_at_mut(hlen);
        let (body, tag) = rest.split_at_mut(body_len);
        self.open_parts(header, resolved, head, metadata, body, tag)?;
        Ok(OpenedFrame {
            kid: header.kid,
            ctr: header.ctr,
            plaintext: hlen..hlen + body_len,
        })
    }

    /// Opens `ciphertext` and replaces the contents of `out` with the plaintext, reusing
    /// `out`'s capacity. The returned range is `0..out.len()`. `out` is cleared on failure.
    pub fn open_into(
        &mut self,
        metadata: &[u8],
        ciphertext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<OpenedFrame, SframeError> {
        out.clear();
        let (header, hlen) = Header::decode(ciphertext)?;
        let resolved = self.resolve(header)?;
        let nt = self.tag_len(header, &resolved);
        // `Header::decode` succeeded, so `hlen <= ciphertext.len()`.
        let rest = &ciphertext[hlen..];
        let body_len = rest
            .len()
            .checked_sub(nt)
            .ok_or(SframeError::CiphertextTooShort {
                len: rest.len(),
                tag_len: nt,
            })?;
        let (body, tag) = rest.split_at(body_len);
        out.extend_from_slice(body);
        let res = self.open_parts(header, resolved, &ciphertext[..hlen], metadata, out, tag);
        if let Err(e) = res {
            out.clear();
            return Err(e);
        }
        Ok(OpenedFrame {
            kid: header.kid,
            ctr: header.ctr,
            plaintext: 0..out.len(),
        })
    }

    /// Allocating convenience wrapper: returns `(kid, ctr, plaintext)`.
    pub fn open(
        &mut self,
        metadata: &[u8],
        ciphertext: &[u8],
    ) -> Result<(u64, u64, Vec<u8>), SframeError> {
        let mut out = Vec::new();
        let opened = self.open_into(metadata, ciphertext, &mut out)?;
        Ok((opened.kid, opened.ctr, out))
    }
}
