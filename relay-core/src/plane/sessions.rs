//! Signalling connections and participants' sessions: what the plane knows of each
//! connection (its authentication, message rate, broadcast budget, hello deadline) and of
//! each participant in a call (its offer, ICE credentials, claimed SSRCs and its
//! [`Negotiation`]). The plane owns the tables; hello, join and removal are its methods,
//! because each touches the registry, the lobby and the timers too.

use super::bucket::Bucket;
use super::negotiator::Negotiation;
use super::ConnId;
use crate::budget::{BudgetRate, ByteBudget};
use crate::token::{self, Claims};
use crate::PeerId;
use blindrelay_protocol::sdp::{Numbering, Offer, SentTrack};
use std::time::Instant;

#[derive(Debug)]
pub(super) struct Conn {
    pub(super) claims: Option<Claims>,
    pub(super) peer: Option<PeerId>,
    pub(super) rate: Bucket,
    /// What this connection's participant may still make the relay send to others; on
    /// the connection, so leaving and joining again does not refill it.
    pub(super) broadcast: ByteBudget,
    pub(super) hello_deadline: Option<Instant>,
    /// A close was ordered: nothing more is read from or sent to it.
    pub(super) closing: bool,
    /// Another node serves its media (a cascade).
    pub(super) media: Option<super::MediaEndpoint>,
}

impl Conn {
    /// A connection just up: it must say a valid hello by `hello_deadline`.
    pub(super) fn new(
        now: Instant,
        hello_deadline: Instant,
        message_burst: u32,
        broadcast: BudgetRate,
    ) -> Conn {
        Conn {
            claims: None,
            peer: None,
            rate: Bucket::full(message_burst, now),
            broadcast: ByteBudget::full(broadcast, now),
            hello_deadline: Some(hello_deadline),
            closing: false,
            media: None,
        }
    }

    /// Take one message from its rate (`per_second`, up to `burst`): false if it is over
    /// it.
    pub(super) fn admit(&mut self, now: Instant, per_second: u32, burst: u32) -> bool {
        self.rate.take(now, f64::from(per_second), burst)
    }

    /// A valid hello: authenticated, and no hello deadline any more.
    pub(super) fn authenticated(&mut self, claims: Claims) {
        self.claims = Some(claims);
        self.hello_deadline = None;
    }

    /// A hello that failed. A connection that lost its authentication (or had no
    /// deadline) must say a valid hello by `deadline`: returned for its timer. One that
    /// was waiting keeps its first deadline, so failed hellos cannot put it off.
    pub(super) fn failed_hello(&mut self, deadline: Instant) -> Option<Instant> {
        if self.claims.take().is_some() || self.hello_deadline.is_none() {
            self.hello_deadline = Some(deadline);
            return Some(deadline);
        }
        None
    }

    /// Unauthenticated and still read: it owes a valid hello.
    pub(super) fn awaits_hello(&self) -> bool {
        self.claims.is_none() && !self.closing
    }

    /// It owes a hello and its deadline has passed.
    pub(super) fn hello_overdue(&self, now: Instant) -> bool {
        self.awaits_hello() && self.hello_deadline.is_some_and(|d| d <= now)
    }

    pub(super) fn user_key(&self) -> Option<String> {
        self.claims.as_ref().map(|c| user_key(&c.sub, &c.tenant))
    }
}

#[derive(Debug)]
pub(super) struct Session {
    pub(super) conn: ConnId,
    pub(super) public_id: String,
    pub(super) user_key: String,
    pub(super) role: &'static str,
    pub(super) call: String,
    pub(super) local_ufrag: String,
    pub(super) local_pwd: String,
    pub(super) worker: usize,
    /// The participant's offer: its own m-lines, its numbering and what it sends.
    pub(super) offer: Offer,
    pub(super) numbering: Numbering,
    pub(super) tracks: Vec<SentTrack>,
    pub(super) joined_at: Instant,
    pub(super) last_activity: Instant,
    pub(super) keyed: bool,
    pub(super) neg: Negotiation,
    /// The SSRCs its last accepted answer listed (a receive-only stack reports from
    /// them): claimed like the offer's, so nobody else in the call may announce them.
    pub(super) answer_ssrcs: Vec<u32>,
    /// Another node serves its media (a cascade): its descriptions name that node.
    pub(super) media: Option<super::MediaEndpoint>,
    /// Its caps on remote video tracks' picture heights (track SSRC, lines), kept until
    /// its forwarding loop has it (a page asks as soon as a track arrives, often before
    /// its DTLS is done). At most one per remote line.
    pub(super) max_heights: Vec<(u32, u16)>,
}

impl Session {
    /// Whether this session claims `ssrc`: its offer announced it or its answer listed it.
    #[cfg(test)]
    pub(super) fn claims_ssrc(&self, ssrc: u32) -> bool {
        self.claimed_ssrcs().any(|x| x == ssrc)
    }

    /// The SSRCs it claims (see [`Session::claims_ssrc`]), each at least once.
    pub(super) fn claimed_ssrcs(&self) -> impl Iterator<Item = u32> + '_ {
        self.offer
            .media
            .iter()
            .flat_map(|m| m.ssrcs.iter().copied())
            .chain(self.answer_ssrcs.iter().copied())
    }
}

/// `user@tenant`: how the lobby and invitations name people.
pub fn user_key(user: &str, tenant: &str) -> String {
    format!("{user}@{tenant}")
}

pub(super) fn role_label(role: &str) -> &'static str {
    token::ROLES
        .into_iter()
        .find(|r| *r == role)
        .unwrap_or("user")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn claims() -> Claims {
        Claims {
            sub: "a".into(),
            tenant: "t".into(),
            role: "user".into(),
            call: None,
            exp: 0,
            iat: 0,
            nbf: None,
            cnf: None,
        }
    }

    #[test]
    fn a_connection_owes_one_hello_by_its_deadline_and_messages_by_its_rate() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let rate = BudgetRate {
            bytes_per_second: 100,
            burst_bytes: 100,
        };
        let mut c = Conn::new(t0, t0 + 10 * s, 2, rate);
        assert!(c.awaits_hello());
        assert!(!c.hello_overdue(t0 + 9 * s));
        // Failed hellos do not put the deadline off.
        assert_eq!(c.failed_hello(t0 + 19 * s), None);
        assert!(c.hello_overdue(t0 + 10 * s));
        c.authenticated(claims());
        assert!(!c.awaits_hello() && !c.hello_overdue(t0 + 60 * s));
        assert_eq!(c.user_key().as_deref(), Some("a@t"));
        // Losing its authentication sets a new deadline.
        assert_eq!(c.failed_hello(t0 + 70 * s), Some(t0 + 70 * s));
        assert!(c.awaits_hello());
        // Two messages of burst, then one a second.
        assert!(c.admit(t0, 1, 2) && c.admit(t0, 1, 2));
        assert!(!c.admit(t0, 1, 2));
        assert!(c.admit(t0 + s, 1, 2));
        // A closing connection owes nothing.
        c.closing = true;
        assert!(!c.hello_overdue(t0 + 99 * s));
    }
}
