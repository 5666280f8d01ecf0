//! KID layout of the sender-key ratchet (RFC 9605 §5.1).
//!
//! ```text
//! KID = (key_generation << R) + (ratchet_step % (1 << R))
//! ```
//! Only the low `R` bits of the ratchet step travel in the KID, so a receiver can tell "same
//! sender key, ratcheted N steps" from "new key generation" without extra signalling.

use super::error::SframeError;

/// The application-chosen `R` (number of KID bits carrying the ratchet step).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RatchetParams {
    r_bits: u8,
}

impl RatchetParams {
    /// `r_bits` must be in `1..=63`: at least one step bit, and at least one generation bit.
    pub fn new(r_bits: u8) -> Result<Self, SframeError> {
        if !(1..=63).contains(&r_bits) {
            return Err(SframeError::InvalidRatchet(
                "R must be between 1 and 63 bits",
            ));
        }
        Ok(Self { r_bits })
    }

    /// `R`.
    pub fn r_bits(self) -> u8 {
        self.r_bits
    }

    fn mask(self) -> u64 {
        (1u64 << self.r_bits) - 1
    }

    /// Builds a KID from a key generation and a ratchet step (only `step mod 2^R` is kept).
    pub fn kid(self, generation: u64, step: u64) -> Result<u64, SframeError> {
        if generation > (u64::MAX >> self.r_bits) {
            return Err(SframeError::InvalidRatchet(
                "key generation does not fit in 64 - R bits",
            ));
        }
        Ok((generation << self.r_bits) | (step & self.mask()))
    }

    /// Key generation carried by `kid`.
    pub fn generation(self, kid: u64) -> u64 {
        kid >> self.r_bits
    }

    /// Ratchet step (mod 2^R) carried by `kid`.
    pub fn step(self, kid: u64) -> u64 {
        kid & self.mask()
    }

    /// The KID after one more ratchet step (same generation, step wraps mod 2^R).
    pub fn next_kid(self, kid: u64) -> u64 {
        (kid & !self.mask()) | (self.step(kid).wrapping_add(1) & self.mask())
    }

    /// How many ratchet steps lead from `from` to `to` (mod 2^R), both of one generation.
    pub fn steps_between(self, from: u64, to: u64) -> u64 {
        self.step(to).wrapping_sub(self.step(from)) & self.mask()
    }
}
