//! ICE-lite (RFC 8445 §2.5): the relay never sends checks; it answers valid binding
//! requests and learns each participant's address from them.

use super::report::DropReason;
use blindrelay_protocol::stun::{
    StunError, StunMessage, StunWriter, BINDING_INDICATION, BINDING_REQUEST, BINDING_SUCCESS,
};
use std::net::SocketAddr;

/// Short-term credentials of one participant's ICE session.
pub trait IceCredentials {
    /// The relay's ice-pwd for this participant (keys MESSAGE-INTEGRITY both ways).
    fn local_pwd(&self) -> &str;
    /// The participant's ice-ufrag from its offer.
    fn remote_ufrag(&self) -> &str;
}

/// A binding request that passed every check.
#[derive(Debug)]
pub struct ValidBinding<T> {
    pub entry: T,
    pub response: Vec<u8>,
    pub use_candidate: bool,
}

/// What to do with a STUN datagram.
#[derive(Debug)]
pub enum StunOutcome<T> {
    /// Answer it; the sender is who `entry` says.
    Binding(ValidBinding<T>),
    /// A binding indication (keepalive): nothing to send.
    Indication,
    Drop(DropReason),
}

/// Check a STUN datagram from `from`: a binding request whose USERNAME is
/// `relay_ufrag:client_ufrag` of a known participant and whose MESSAGE-INTEGRITY verifies
/// with that participant's relay password. `lookup` finds a participant by relay ufrag.
pub fn handle_stun<T: IceCredentials>(
    buf: &[u8],
    from: SocketAddr,
    lookup: impl FnOnce(&str) -> Option<T>,
) -> StunOutcome<T> {
    let msg = match StunMessage::parse(buf) {
        Ok(m) => m,
        Err(_) => return StunOutcome::Drop(DropReason::StunMalformed),
    };
    if msg.msg_type == BINDING_INDICATION {
        return StunOutcome::Indication;
    }
    if msg.msg_type != BINDING_REQUEST {
        return StunOutcome::Drop(DropReason::StunUnexpected);
    }
    let Some((local, remote)) = msg.username.and_then(|u| u.split_once(':')) else {
        return StunOutcome::Drop(DropReason::StunUnknownUser);
    };
    let Some(entry) = lookup(local) else {
        return StunOutcome::Drop(DropReason::StunUnknownUser);
    };
    if entry.remote_ufrag() != remote {
        return StunOutcome::Drop(DropReason::StunUnknownUser);
    }
    match msg.verify_integrity(entry.local_pwd().as_bytes()) {
        Ok(()) => {}
        Err(StunError::NoIntegrity) | Err(_) => {
            return StunOutcome::Drop(DropReason::StunBadIntegrity)
        }
    }
    let response = StunWriter::new(BINDING_SUCCESS, &msg.transaction_id)
        .xor_mapped_address(from)
        .integrity(entry.local_pwd().as_bytes())
        .finish_with_fingerprint();
    StunOutcome::Binding(ValidBinding {
        entry,
        response,
        use_candidate: msg.use_candidate,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Creds;
    impl IceCredentials for Creds {
        fn local_pwd(&self) -> &str {
            "relaypassword0123456789"
        }
        fn remote_ufrag(&self) -> &str {
            "cli"
        }
    }

    fn req(user: &str, pwd: &str) -> Vec<u8> {
        StunWriter::new(BINDING_REQUEST, &[1; 12])
            .username(user)
            .use_candidate()
            .integrity(pwd.as_bytes())
            .finish_with_fingerprint()
    }

    #[test]
    fn answers_valid_and_drops_the_rest() {
        let from: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let lookup = |u: &str| (u == "rel").then_some(Creds);
        match handle_stun(&req("rel:cli", "relaypassword0123456789"), from, lookup) {
            StunOutcome::Binding(b) => {
                assert!(b.use_candidate);
                let m = StunMessage::parse(&b.response).unwrap();
                assert_eq!(m.xor_mapped_address, Some(from));
                m.verify_integrity(b"relaypassword0123456789").unwrap();
            }
            o => panic!("{o:?}"),
        }
        assert!(matches!(
            handle_stun(&req("rel:cli", "wrong"), from, lookup),
            StunOutcome::Drop(DropReason::StunBadIntegrity)
        ));
        assert!(matches!(
            handle_stun(&req("nobody:cli", "x"), from, lookup),
            StunOutcome::Drop(DropReason::StunUnknownUser)
        ));
        assert!(matches!(
            handle_stun(&req("rel:other", "relaypassword0123456789"), from, lookup),
            StunOutcome::Drop(DropReason::StunUnknownUser)
        ));
        assert!(matches!(
            handle_stun(&[0, 1, 0], from, lookup),
            StunOutcome::Drop(DropReason::StunMalformed)
        ));
    }
}
