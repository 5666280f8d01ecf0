//! What MLS messages (RFC 9420) show in the clear, read by the relay as MLS Delivery
//! Service, which has no MLS library and no keys:
//! - a handshake message's wire format, group id, epoch and content type (§6): commits are
//!   ordered per epoch from these alone;
//! - a KeyPackage's fields (§10) and its KeyPackageRef (§5.2), computed when a joiner
//!   publishes it;
//! - a Welcome's clear part (§12.4.3): the KeyPackageRef of each member it adds, so it goes
//!   only to those joiners, and only they may then say they joined.
//!
//! Parsers borrow from their input (nothing is copied), every length is checked against
//! what is left of the input, and bad input gets an [`MlsFramingError`].

use sha2::{Digest, Sha256};
use thiserror::Error;

/// Why a blob is not an MLS message the relay can order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum MlsFramingError {
    #[error("MLS message truncated")]
    Truncated,
    #[error("not MLS 1.0")]
    Version,
    #[error("MLS wire format {0} carries no epoch")]
    WireFormat(u16),
    #[error("bad MLS variable-length integer")]
    VarInt,
    #[error("MLS wire format {got}, expected {expected}")]
    UnexpectedWireFormat { expected: u16, got: u16 },
    #[error("MLS cipher suite {0:#06x} is not supported")]
    CipherSuite(u16),
    #[error("a KeyPackage's leaf node has source {0}, not key_package (1)")]
    LeafNodeSource(u8),
    #[error("a Welcome adding more than {MAX_WELCOME_SECRETS} members")]
    TooManySecrets,
    #[error("{0} bytes after the end of the MLS message")]
    Trailing(usize),
}

/// `PublicMessage` (1) and `PrivateMessage` (2): the wire formats with an epoch.
pub const WIRE_PUBLIC: u16 = 1;
pub const WIRE_PRIVATE: u16 = 2;
/// ContentType `commit`.
pub const CONTENT_COMMIT: u8 = 3;
/// ContentType `proposal`.
pub const CONTENT_PROPOSAL: u8 = 2;
/// The wire formats of a Welcome (3) and a KeyPackage (5).
pub const WIRE_WELCOME: u16 = 3;
pub const WIRE_KEY_PACKAGE: u16 = 5;
/// MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519, the suite the project's clients use.
pub const SUITE_X25519_AES128GCM_SHA256_ED25519: u16 = 1;
/// A Welcome may add at most this many members (far above any call's size limit).
pub const MAX_WELCOME_SECRETS: usize = 1024;
const KEY_PACKAGE_REF_LABEL: &[u8] = b"MLS 1.0 KeyPackage Reference";
/// `KeyPackageRef` of a SHA-256 suite.
pub type KeyPackageRef = [u8; 32];

/// The clear fields of a handshake message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MlsFraming<'a> {
    pub wire_format: u16,
    pub group_id: &'a [u8],
    pub epoch: u64,
    pub content_type: u8,
}

#[derive(Debug, Clone)]
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], MlsFramingError> {
        if self.0.len() < n {
            return Err(MlsFramingError::Truncated);
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, MlsFramingError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, MlsFramingError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u64(&mut self) -> Result<u64, MlsFramingError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(a))
    }
    /// `opaque x<V>`: a QUIC-style variable-length length (RFC 9420 §2.1.2), then bytes.
    /// The length must use its shortest encoding, as §2.1.2 requires: the KeyPackageRef
    /// hashes the bytes as sent, so one message must have one encoding.
    fn vec(&mut self) -> Result<&'a [u8], MlsFramingError> {
        let first = self.u8()?;
        let (len, min) = match first >> 6 {
            0 => (usize::from(first & 0x3f), 0),
            1 => (
                (usize::from(first & 0x3f) << 8) | usize::from(self.u8()?),
                1 << 6,
            ),
            2 => {
                let b = self.take(3)?;
                (
                    (usize::from(first & 0x3f) << 24)
                        | (usize::from(b[0]) << 16)
                        | (usize::from(b[1]) << 8)
                        | usize::from(b[2]),
                    1 << 14,
                )
            }
            _ => return Err(MlsFramingError::VarInt),
        };
        if len < min {
            return Err(MlsFramingError::VarInt);
        }
        self.take(len)
    }
    fn end(&self) -> Result<(), MlsFramingError> {
        match self.0.len() {
            0 => Ok(()),
            n => Err(MlsFramingError::Trailing(n)),
        }
    }
    /// An `MLSMessage` header: version 1 and the expected wire format.
    fn header(&mut self, expected: u16) -> Result<(), MlsFramingError> {
        if self.u16()? != 1 {
            return Err(MlsFramingError::Version);
        }
        match self.u16()? {
            got if got == expected => Ok(()),
            got => Err(MlsFramingError::UnexpectedWireFormat { expected, got }),
        }
    }
}

/// Append `len` as an MLS variable-length integer (shortest form; `len` < 2^30).
fn put_varint(out: &mut Vec<u8>, len: usize) {
    // Callers pass lengths of in-memory slices read through a varint (< 2^30).
    let n = u32::try_from(len).unwrap_or(u32::MAX);
    if n < 1 << 6 {
        out.push(n as u8);
    } else if n < 1 << 14 {
        out.extend_from_slice(&((n as u16) | 0x4000).to_be_bytes());
    } else {
        out.extend_from_slice(&(n | 0x8000_0000).to_be_bytes());
    }
}

/// Read the clear header of a serialised `MLSMessage` holding a handshake message.
pub fn parse_framing(msg: &[u8]) -> Result<MlsFraming<'_>, MlsFramingError> {
    let mut r = Reader(msg);
    if r.u16()? != 1 {
        return Err(MlsFramingError::Version);
    }
    let wire_format = r.u16()?;
    match wire_format {
        WIRE_PUBLIC => {
            let group_id = r.vec()?;
            let epoch = r.u64()?;
            // Sender: member (1) and external (2) carry a u32; new_member_* nothing.
            match r.u8()? {
                1 | 2 => {
                    r.take(4)?;
                }
                _ => {}
            }
            r.vec()?; // authenticated_data
            let content_type = r.u8()?;
            Ok(MlsFraming {
                wire_format,
                group_id,
                epoch,
                content_type,
            })
        }
        WIRE_PRIVATE => {
            let group_id = r.vec()?;
            let epoch = r.u64()?;
            let content_type = r.u8()?;
            Ok(MlsFraming {
                wire_format,
                group_id,
                epoch,
                content_type,
            })
        }
        other => Err(MlsFramingError::WireFormat(other)),
    }
}

/// The clear fields of a KeyPackage (RFC 9420 §10), borrowed from the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyPackage<'a> {
    /// The encoded `KeyPackage` (the `MLSMessage` without its 4-byte header): what its
    /// KeyPackageRef hashes.
    pub encoded: &'a [u8],
    pub cipher_suite: u16,
    pub init_key: &'a [u8],
    pub encryption_key: &'a [u8],
    pub signature_key: &'a [u8],
    pub credential_type: u16,
    /// The credential's content (a basic credential's identity, still length-free).
    pub credential: &'a [u8],
}

impl KeyPackage<'_> {
    /// `RefHash("MLS 1.0 KeyPackage Reference", KeyPackage)` (RFC 9420 §5.2): how a
    /// Welcome names the members it adds. Only the SHA-256 suites (1 to 3) are known.
    pub fn reference(&self) -> Result<KeyPackageRef, MlsFramingError> {
        if !(1..=3).contains(&self.cipher_suite) {
            return Err(MlsFramingError::CipherSuite(self.cipher_suite));
        }
        let mut prefix = Vec::with_capacity(KEY_PACKAGE_REF_LABEL.len() + 5);
        put_varint(&mut prefix, KEY_PACKAGE_REF_LABEL.len());
        prefix.extend_from_slice(KEY_PACKAGE_REF_LABEL);
        put_varint(&mut prefix, self.encoded.len());
        Ok(Sha256::new()
            .chain_update(&prefix)
            .chain_update(self.encoded)
            .finalize()
            .into())
    }
}

/// Read a serialised `MLSMessage` holding a KeyPackage (wire format 5), every field of it
/// down to the end: a KeyPackage that does not parse is refused when it arrives rather
/// than when a member tries to commit it.
pub fn parse_key_package(msg: &[u8]) -> Result<KeyPackage<'_>, MlsFramingError> {
    let mut r = Reader(msg);
    r.header(WIRE_KEY_PACKAGE)?;
    let encoded = r.0;
    if r.u16()? != 1 {
        return Err(MlsFramingError::Version);
    }
    let cipher_suite = r.u16()?;
    let init_key = r.vec()?;
    // LeafNode (§7.2).
    let encryption_key = r.vec()?;
    let signature_key = r.vec()?;
    // Credential: a type, then one variable-length vector for every type (a basic
    // identity, the list of x509 certificates, or another type's content).
    let credential_type = r.u16()?;
    let credential = r.vec()?;
    // Capabilities: versions, cipher suites, extensions, proposals, credentials.
    for _ in 0..5 {
        r.vec()?;
    }
    match r.u8()? {
        1 => {
            r.take(16)?; // Lifetime: not_before, not_after.
        }
        other => return Err(MlsFramingError::LeafNodeSource(other)),
    }
    r.vec()?; // the leaf node's extensions
    r.vec()?; // the leaf node's signature
    r.vec()?; // the KeyPackage's extensions
    r.vec()?; // the KeyPackage's signature
    r.end()?;
    Ok(KeyPackage {
        encoded,
        cipher_suite,
        init_key,
        encryption_key,
        signature_key,
        credential_type,
        credential,
    })
}

/// The clear part of a Welcome (RFC 9420 §12.4.3), borrowed from the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Welcome<'a> {
    pub cipher_suite: u16,
    /// The `EncryptedGroupSecrets` entries, checked to parse: see [`Welcome::new_members`].
    secrets: &'a [u8],
    /// How many entries `secrets` holds.
    pub count: usize,
    pub encrypted_group_info: &'a [u8],
}

impl<'a> Welcome<'a> {
    /// The KeyPackageRef of each member the Welcome adds, in order.
    pub fn new_members(&self) -> NewMembers<'a> {
        NewMembers(Reader(self.secrets))
    }
}

/// One `EncryptedGroupSecrets`: its `new_member` ref.
fn group_secrets<'a>(r: &mut Reader<'a>) -> Result<&'a [u8], MlsFramingError> {
    let new_member = r.vec()?;
    r.vec()?; // HPKECiphertext.kem_output
    r.vec()?; // HPKECiphertext.ciphertext
    Ok(new_member)
}

/// Iterator over a [`Welcome`]'s new members' KeyPackageRefs.
#[derive(Debug, Clone)]
pub struct NewMembers<'a>(Reader<'a>);

impl<'a> Iterator for NewMembers<'a> {
    type Item = &'a [u8];
    fn next(&mut self) -> Option<&'a [u8]> {
        if self.0 .0.is_empty() {
            return None;
        }
        // [`parse_welcome`] read every entry already, so this does not fail; if it did,
        // the iteration would only end early.
        group_secrets(&mut self.0).ok()
    }
}

/// Read a serialised `MLSMessage` holding a Welcome (wire format 3) down to its end.
pub fn parse_welcome(msg: &[u8]) -> Result<Welcome<'_>, MlsFramingError> {
    let mut r = Reader(msg);
    r.header(WIRE_WELCOME)?;
    let cipher_suite = r.u16()?;
    let secrets = r.vec()?;
    let mut entries = Reader(secrets);
    let mut count = 0;
    while !entries.0.is_empty() {
        if count == MAX_WELCOME_SECRETS {
            return Err(MlsFramingError::TooManySecrets);
        }
        group_secrets(&mut entries)?;
        count += 1;
    }
    let encrypted_group_info = r.vec()?;
    r.end()?;
    Ok(Welcome {
        cipher_suite,
        secrets,
        count,
        encrypted_group_info,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_public_and_private_headers_and_refuses_the_rest() {
        // version 1, public, group id "g1", epoch 7, member sender 3, no aad, commit.
        let mut m = vec![0, 1, 0, 1, 2, b'g', b'1'];
        m.extend_from_slice(&7u64.to_be_bytes());
        m.extend_from_slice(&[1, 0, 0, 0, 3, 0, CONTENT_COMMIT, 0xaa]);
        let f = parse_framing(&m).unwrap();
        assert_eq!(
            f,
            MlsFraming {
                wire_format: WIRE_PUBLIC,
                group_id: b"g1",
                epoch: 7,
                content_type: CONTENT_COMMIT
            }
        );
        // Private: group id with a 2-byte length.
        let gid = vec![9u8; 70];
        let mut p = vec![0, 1, 0, 2, 0x40, 70];
        p.extend_from_slice(&gid);
        p.extend_from_slice(&u64::MAX.to_be_bytes());
        p.push(CONTENT_PROPOSAL);
        let f = parse_framing(&p).unwrap();
        assert_eq!((f.group_id.len(), f.epoch), (70, u64::MAX));
        for n in 0..m.len() - 1 {
            assert!(parse_framing(&m[..n]).is_err(), "prefix {n}");
        }
        assert_eq!(
            parse_framing(&[0, 1, 0, 3, 0]),
            Err(MlsFramingError::WireFormat(3))
        );
        assert_eq!(parse_framing(&[0, 2, 0, 1]), Err(MlsFramingError::Version));
        assert_eq!(
            parse_framing(&[0, 1, 0, 1, 0xc0]),
            Err(MlsFramingError::VarInt)
        );
    }

    fn v(out: &mut Vec<u8>, bytes: &[u8]) {
        put_varint(out, bytes.len());
        out.extend_from_slice(bytes);
    }

    /// A well-formed KeyPackage message (its signatures are not checked by the parser).
    fn key_package(identity: &[u8], suite: u16) -> Vec<u8> {
        let mut m = vec![0, 1, 0, 5, 0, 1];
        m.extend_from_slice(&suite.to_be_bytes());
        v(&mut m, &[1; 32]); // init_key
        v(&mut m, &[2; 32]); // encryption_key
        v(&mut m, &[3; 32]); // signature_key
        m.extend_from_slice(&[0, 1]); // basic credential
        v(&mut m, identity);
        for cap in [&[0u8, 1][..], &[0, 1], &[], &[], &[0, 1]] {
            v(&mut m, cap);
        }
        m.push(1);
        m.extend_from_slice(&[0; 8]);
        m.extend_from_slice(&[0xff; 8]);
        v(&mut m, &[]); // leaf extensions
        v(&mut m, &[4; 64]); // leaf signature
        v(&mut m, &[]); // extensions
        v(&mut m, &[5; 64]); // signature
        m
    }

    fn welcome(refs: &[&[u8]]) -> Vec<u8> {
        let mut secrets = Vec::new();
        for r in refs {
            v(&mut secrets, r);
            v(&mut secrets, &[6; 32]);
            v(&mut secrets, &[7; 100]);
        }
        let mut m = vec![0, 1, 0, 3, 0, 1];
        v(&mut m, &secrets);
        v(&mut m, &[8; 300]);
        m
    }

    #[test]
    fn varint_lengths_are_shortest_form_and_round_trip() {
        for n in [0usize, 1, 63, 64, 16383, 16384, 1 << 20] {
            let mut m = Vec::new();
            put_varint(&mut m, n);
            assert_eq!(
                m.len(),
                if n < 64 {
                    1
                } else if n < 16384 {
                    2
                } else {
                    4
                }
            );
            m.resize(m.len() + n, 0);
            assert_eq!(Reader(&m).vec().map(<[u8]>::len), Ok(n));
        }
        // 5 in two bytes, and 100 in four: valid lengths, not in their shortest form.
        assert_eq!(
            Reader(&[0x40, 5, 0, 0, 0, 0, 0]).vec(),
            Err(MlsFramingError::VarInt)
        );
        let mut long = vec![0x80, 0, 0, 100];
        long.resize(104, 0);
        assert_eq!(Reader(&long).vec(), Err(MlsFramingError::VarInt));
    }

    #[test]
    fn key_package_fields_and_reference() {
        let m = key_package(b"p-ann", SUITE_X25519_AES128GCM_SHA256_ED25519);
        let kp = parse_key_package(&m).unwrap();
        assert_eq!(kp.encoded, &m[4..]);
        assert_eq!(kp.cipher_suite, 1);
        assert_eq!(kp.credential_type, 1);
        assert_eq!(kp.credential, b"p-ann");
        assert_eq!(kp.signature_key, &[3; 32]);
        // RefHash: SHA-256 over label<V> then value<V> (both lengths under 2^14 here).
        let mut input = vec![28];
        input.extend_from_slice(b"MLS 1.0 KeyPackage Reference");
        put_varint(&mut input, m.len() - 4);
        input.extend_from_slice(&m[4..]);
        let want: [u8; 32] = Sha256::digest(&input).into();
        assert_eq!(kp.reference(), Ok(want));
        assert_ne!(
            parse_key_package(&key_package(b"p-ben", 1))
                .unwrap()
                .reference()
                .unwrap(),
            want
        );
        assert_eq!(
            parse_key_package(&key_package(b"p-ann", 4))
                .unwrap()
                .reference(),
            Err(MlsFramingError::CipherSuite(4))
        );
        for n in 0..m.len() {
            assert!(parse_key_package(&m[..n]).is_err(), "prefix {n}");
        }
        let mut trailing = m.clone();
        trailing.push(0);
        assert_eq!(
            parse_key_package(&trailing),
            Err(MlsFramingError::Trailing(1))
        );
        let mut other = m.clone();
        other[3] = 3;
        assert_eq!(
            parse_key_package(&other),
            Err(MlsFramingError::UnexpectedWireFormat {
                expected: WIRE_KEY_PACKAGE,
                got: WIRE_WELCOME
            })
        );
        // A leaf node that is not a KeyPackage's (source `commit`).
        let at = m.len() - (1 + 16 + 1 + 66 + 1 + 66); // 64-byte signatures take a 2-byte length
        assert_eq!(m[at], 1, "the leaf node source");
        let mut commit_leaf = m.clone();
        commit_leaf[at] = 3;
        assert_eq!(
            parse_key_package(&commit_leaf),
            Err(MlsFramingError::LeafNodeSource(3))
        );
    }

    #[test]
    fn welcome_names_its_new_members() {
        let (a, b) = ([0xaa; 32], [0xbb; 32]);
        let m = welcome(&[&a, &b]);
        let w = parse_welcome(&m).unwrap();
        assert_eq!((w.cipher_suite, w.count), (1, 2));
        assert_eq!(w.new_members().collect::<Vec<_>>(), [&a[..], &b[..]]);
        assert_eq!(w.encrypted_group_info, &[8; 300]);
        assert_eq!(
            parse_welcome(&welcome(&[])).unwrap().new_members().count(),
            0
        );
        for n in 0..m.len() {
            assert!(parse_welcome(&m[..n]).is_err(), "prefix {n}");
        }
        let mut trailing = m.clone();
        trailing.extend_from_slice(&[1, 2]);
        assert_eq!(parse_welcome(&trailing), Err(MlsFramingError::Trailing(2)));
        // A secrets vector whose last entry is cut short inside it.
        let mut cut = vec![0, 1, 0, 3, 0, 1];
        v(&mut cut, &[32, 1, 2]);
        v(&mut cut, &[]);
        assert_eq!(parse_welcome(&cut), Err(MlsFramingError::Truncated));
        let small: Vec<&[u8]> = vec![&[]; MAX_WELCOME_SECRETS + 1];
        assert_eq!(
            parse_welcome(&welcome(&small)),
            Err(MlsFramingError::TooManySecrets)
        );
        let kp = key_package(b"x", 1);
        assert!(matches!(
            parse_welcome(&kp),
            Err(MlsFramingError::UnexpectedWireFormat { .. })
        ));
    }
}
