//! The short authentication string users compare out of band.

use std::fmt;

use subtle::ConstantTimeEq;

/// Number of decimal digits in a [`VerificationCode`].
pub const VERIFICATION_CODE_DIGITS: usize = 20;

/// A 20-digit verification code, shown as `"12345 67890 12345 67890"`.
///
/// Both participants derive it from the transcript-bound PRK; if (and, up to
/// 10^-20 per attempt, only if) no one substituted keys, the codes are equal. The
/// commit-then-reveal order stops a man in the middle from grinding keys until
/// the two codes collide, so one attempt is all an attacker gets.
///
/// Derivation: the 16 HKDF output bytes are read as a big-endian `u128` and reduced
/// mod 10^20. Since 2^128 / 10^20 ≈ 3.4·10^18, the modulo bias is below 3·10^-19
/// per value: indistinguishable from uniform.
///
/// Equality is constant time so comparing a typed-in code leaks nothing via timing.
#[derive(Clone)]
pub struct VerificationCode {
    /// Exactly 20 ASCII digits.
    digits: String,
}

impl VerificationCode {
    /// Builds the code from the 16-byte HKDF output.
    pub(crate) fn from_okm(okm: [u8; 16]) -> Self {
        let value = u128::from_be_bytes(okm) % 10u128.pow(VERIFICATION_CODE_DIGITS as u32);
        Self {
            digits: format!("{value:020}"),
        }
    }

    /// The 20 digits without separators (e.g. for machine comparison or a QR code).
    pub fn digits(&self) -> &str {
        &self.digits
    }
}

impl fmt::Display for VerificationCode {
    /// Four groups of five digits separated by single spaces: easy to read aloud.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, group) in self.digits.as_bytes().chunks(5).enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            for &d in group {
                write!(f, "{}", char::from(d))?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for VerificationCode {
    /// The code is meant to be displayed, so it is not secret; show it for diagnostics.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VerificationCode({self})")
    }
}

impl ConstantTimeEq for VerificationCode {
    fn ct_eq(&self, other: &Self) -> subtle::Choice {
        self.digits.as_bytes().ct_eq(other.digits.as_bytes())
    }
}

impl PartialEq for VerificationCode {
    fn eq(&self, other: &Self) -> bool {
        self.ct_eq(other).into()
    }
}

impl Eq for VerificationCode {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_groups_and_pads_with_zeros() {
        let code = VerificationCode::from_okm([0; 16]);
        assert_eq!(code.digits(), "00000000000000000000");
        assert_eq!(code.to_string(), "00000 00000 00000 00000");

        let mut okm = [0u8; 16];
        okm[8..].copy_from_slice(&12_345_678_901_234_567_890u64.to_be_bytes());
        let code = VerificationCode::from_okm(okm);
        assert_eq!(code.to_string(), "12345 67890 12345 67890");
        assert_eq!(code.digits().len(), VERIFICATION_CODE_DIGITS);
    }

    #[test]
    fn max_value_reduces_mod_10_pow_20() {
        let code = VerificationCode::from_okm([0xff; 16]);
        let expected = u128::MAX % 100_000_000_000_000_000_000u128;
        assert_eq!(code.digits(), format!("{expected:020}"));
    }

    #[test]
    fn equality() {
        let a = VerificationCode::from_okm([1; 16]);
        let b = VerificationCode::from_okm([1; 16]);
        let c = VerificationCode::from_okm([2; 16]);
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
