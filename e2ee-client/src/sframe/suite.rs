//! SFrame cipher suites (RFC 9605 §4.5, IANA "SFrame Cipher Suites" registry).

use core::{fmt, str::FromStr};

use super::error::SframeError;

/// The five cipher suites defined by RFC 9605.
///
/// The numeric value is the IANA code point; it also enters the key schedule (the HKDF labels
/// contain it), so the same base key yields unrelated keys under different suites.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u16)]
pub enum CipherSuite {
    /// `AES_128_CTR_HMAC_SHA256_80`: AES-128-CTR + HMAC-SHA256 truncated to 10 bytes.
    AesCtr128HmacSha256_80 = 0x0001,
    /// `AES_128_CTR_HMAC_SHA256_64`: AES-128-CTR + HMAC-SHA256 truncated to 8 bytes.
    AesCtr128HmacSha256_64 = 0x0002,
    /// `AES_128_CTR_HMAC_SHA256_32`: AES-128-CTR + HMAC-SHA256 truncated to 4 bytes.
    AesCtr128HmacSha256_32 = 0x0003,
    /// `AES_128_GCM_SHA256_128` (the default).
    #[default]
    AesGcm128Sha256 = 0x0004,
    /// `AES_256_GCM_SHA512_128`.
    AesGcm256Sha512 = 0x0005,
}

/// Hash function used by a suite's key schedule (and HMAC for the CTR suites).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HashAlg {
    Sha256,
    Sha512,
}

impl CipherSuite {
    /// All suites, in code-point order.
    pub const ALL: [CipherSuite; 5] = [
        CipherSuite::AesCtr128HmacSha256_80,
        CipherSuite::AesCtr128HmacSha256_64,
        CipherSuite::AesCtr128HmacSha256_32,
        CipherSuite::AesGcm128Sha256,
        CipherSuite::AesGcm256Sha512,
    ];

    /// IANA code point.
    pub const fn id(self) -> u16 {
        self as u16
    }

    /// Registered name, e.g. `AES_128_GCM_SHA256_128`.
    pub const fn name(self) -> &'static str {
        match self {
            CipherSuite::AesCtr128HmacSha256_80 => "AES_128_CTR_HMAC_SHA256_80",
            CipherSuite::AesCtr128HmacSha256_64 => "AES_128_CTR_HMAC_SHA256_64",
            CipherSuite::AesCtr128HmacSha256_32 => "AES_128_CTR_HMAC_SHA256_32",
            CipherSuite::AesGcm128Sha256 => "AES_128_GCM_SHA256_128",
            CipherSuite::AesGcm256Sha512 => "AES_256_GCM_SHA512_128",
        }
    }

    /// `Nh`: output size of the hash function in bytes.
    pub const fn nh(self) -> usize {
        match self {
            CipherSuite::AesGcm256Sha512 => 64,
            _ => 32,
        }
    }

    /// `Nk`: AEAD key size in bytes (for the CTR suites: 16-byte AES key + 32-byte HMAC key).
    pub const fn nk(self) -> usize {
        match self {
            CipherSuite::AesCtr128HmacSha256_80
            | CipherSuite::AesCtr128HmacSha256_64
            | CipherSuite::AesCtr128HmacSha256_32 => 48,
            CipherSuite::AesGcm128Sha256 => 16,
            CipherSuite::AesGcm256Sha512 => 32,
        }
    }

    /// `Nn`: nonce size in bytes (12 for every suite).
    pub const fn nn(self) -> usize {
        super::kdf::NONCE_LEN
    }

    /// `Nt`: authentication tag size in bytes.
    pub const fn nt(self) -> usize {
        match self {
            CipherSuite::AesCtr128HmacSha256_80 => 10,
            CipherSuite::AesCtr128HmacSha256_64 => 8,
            CipherSuite::AesCtr128HmacSha256_32 => 4,
            CipherSuite::AesGcm128Sha256 | CipherSuite::AesGcm256Sha512 => 16,
        }
    }

    /// Whether this is one of the AES-CTR + HMAC suites of RFC 9605 §4.5.1.
    pub const fn is_ctr_hmac(self) -> bool {
        matches!(
            self,
            CipherSuite::AesCtr128HmacSha256_80
                | CipherSuite::AesCtr128HmacSha256_64
                | CipherSuite::AesCtr128HmacSha256_32
        )
    }

    pub(crate) const fn hash(self) -> HashAlg {
        match self {
            CipherSuite::AesGcm256Sha512 => HashAlg::Sha512,
            _ => HashAlg::Sha256,
        }
    }
}

impl TryFrom<u16> for CipherSuite {
    type Error = SframeError;

    fn try_from(value: u16) -> Result<Self, Self::Error> {
        CipherSuite::ALL
            .into_iter()
            .find(|s| s.id() == value)
            .ok_or(SframeError::UnknownCipherSuite(value))
    }
}

impl From<CipherSuite> for u16 {
    fn from(s: CipherSuite) -> u16 {
        s.id()
    }
}

impl fmt::Display for CipherSuite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (0x{:04x})", self.name(), self.id())
    }
}

/// Parses `4`, `0x0004` or `AES_128_GCM_SHA256_128` (case-insensitive), so a CLI can accept
/// whichever form the user has at hand.
impl FromStr for CipherSuite {
    type Err = SframeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if let Some(found) = CipherSuite::ALL
            .into_iter()
            .find(|c| c.name().eq_ignore_ascii_case(t))
        {
            return Ok(found);
        }
        let parsed = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
            Some(h) => u16::from_str_radix(h, 16),
            None => t.parse::<u16>(),
        };
        match parsed {
            Ok(v) => CipherSuite::try_from(v),
            // Not a number and not a name: report it as an unknown suite with id 0 (reserved).
            Err(_) => Err(SframeError::UnknownCipherSuite(0)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip() {
        for s in CipherSuite::ALL {
            assert_eq!(CipherSuite::try_from(s.id()), Ok(s));
            assert_eq!(s.name().parse::<CipherSuite>(), Ok(s));
            assert_eq!(format!("0x{:04x}", s.id()).parse::<CipherSuite>(), Ok(s));
        }
        assert_eq!(
            CipherSuite::try_from(0),
            Err(SframeError::UnknownCipherSuite(0))
        );
        assert_eq!(
            CipherSuite::try_from(6),
            Err(SframeError::UnknownCipherSuite(6))
        );
        assert_eq!(CipherSuite::default(), CipherSuite::AesGcm128Sha256);
    }
}
