//! Who is reachable outside calls, and the ways into a call that do not name it in a
//! token: the lobby (authenticated connections not in a call, by `user@tenant`),
//! invitations to a call, parked calls by pickup code, and each user's bucket of wrong
//! pickup codes.
//!
//! Each table is bounded (lobby: by connections; invitations: `max_invites`; parked
//! calls: `max_parked`; buckets: users who recently tried a wrong code), and each entry
//! that expires has exactly one timer, set here and cancelled when the entry goes.

use super::bucket::Bucket;
use super::timers::{Timer, Timers};
use super::{ConnId, Refusal};
use crate::PeerId;
use blindrelay_protocol::signal::ErrorCode;
use rand::rngs::StdRng;
use rand::Rng;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// How often a wrong-pickup-code bucket is refilled (and dropped once full).
const BUCKET_CHECK: Duration = Duration::from_secs(60);

/// An invitation of `user@tenant` to a call.
#[derive(Debug)]
pub(super) struct Invite {
    pub(super) expires: Instant,
    /// A consultative transfer completes when the invitee joins: this peer then leaves.
    pub(super) replaces: Option<PeerId>,
}

#[derive(Debug)]
struct Parked {
    call: String,
    tenant: String,
    expires: Instant,
}

/// The lobby's limits and lifetimes (from [`super::PlaneConfig`]).
#[derive(Debug, Clone, Copy)]
pub(super) struct LobbyLimits {
    pub(super) max_invites: usize,
    pub(super) max_parked: usize,
    pub(super) invite_ttl: Duration,
    pub(super) park_ttl: Duration,
    pub(super) retrieve_attempts_per_minute: u32,
}

#[derive(Debug)]
pub(super) struct Lobby {
    limits: LobbyLimits,
    /// Authenticated connections not in a call, by `user@tenant`: who can be invited.
    idle: BTreeMap<String, Vec<ConnId>>,
    invites: HashMap<(String, String), Invite>,
    parked: HashMap<String, Parked>,
    /// Wrong pickup codes per user (only users who tried one have an entry).
    retrieves: HashMap<String, Bucket>,
}

impl Lobby {
    pub(super) fn new(limits: LobbyLimits) -> Lobby {
        Lobby {
            limits,
            idle: BTreeMap::new(),
            invites: HashMap::new(),
            parked: HashMap::new(),
            retrieves: HashMap::new(),
        }
    }

    /// `conn`, authenticated as `key`, is reachable.
    pub(super) fn enter(&mut self, key: String, conn: ConnId) {
        let v = self.idle.entry(key).or_default();
        if !v.contains(&conn) {
            v.push(conn);
        }
    }

    /// `conn` is not reachable as `key` any more (joined, gone, or re-authenticated).
    pub(super) fn leave(&mut self, key: &str, conn: ConnId) {
        if let Some(v) = self.idle.get_mut(key) {
            v.retain(|c| *c != conn);
            if v.is_empty() {
                self.idle.remove(key);
            }
        }
    }

    /// The first `user@tenant` with a connection in the lobby that `pick` accepts.
    pub(super) fn find(&self, mut pick: impl FnMut(ConnId) -> bool) -> Option<&str> {
        self.idle
            .iter()
            .find(|(_, conns)| conns.iter().any(|c| pick(*c)))
            .map(|(k, _)| k.as_str())
    }

    /// Whether `key` holds a live invitation to `call`.
    pub(super) fn invited(&self, now: Instant, key: &str, call: &str) -> bool {
        self.invites
            .get(&(key.to_string(), call.to_string()))
            .is_some_and(|i| i.expires > now)
    }

    /// Invite `key` to `call` (replacing an earlier invitation there). The connections
    /// to tell, or None when `key` has none in the lobby (nothing is kept).
    pub(super) fn invite(
        &mut self,
        now: Instant,
        timers: &mut Timers,
        key: &str,
        call: &str,
        replaces: Option<PeerId>,
    ) -> Result<Option<Vec<ConnId>>, Refusal> {
        let Some(conns) = self.idle.get(key).cloned() else {
            return Ok(None);
        };
        let k = (key.to_string(), call.to_string());
        if !self.invites.contains_key(&k) && self.invites.len() >= self.limits.max_invites {
            return Err((ErrorCode::RelayFull, "too many pending invitations".into()));
        }
        let expires = now + self.limits.invite_ttl;
        self.invites.insert(k, Invite { expires, replaces });
        timers.set(expires, Timer::Invite(key.to_string(), call.to_string()));
        Ok(Some(conns))
    }

    /// `key` joins `call`: its invitation there is used up. Returned if it was live.
    pub(super) fn take_invite(
        &mut self,
        now: Instant,
        timers: &mut Timers,
        key: &str,
        call: &str,
    ) -> Option<Invite> {
        timers.cancel(&Timer::Invite(key.to_string(), call.to_string()));
        self.invites
            .remove(&(key.to_string(), call.to_string()))
            .filter(|i| i.expires > now)
    }

    /// Park `call` of `tenant`: the pickup code, unique among the parked calls so a
    /// retrieve can never find another's.
    pub(super) fn park(
        &mut self,
        now: Instant,
        timers: &mut Timers,
        rng: &mut StdRng,
        call: String,
        tenant: &str,
    ) -> Result<String, Refusal> {
        if self.parked.len() >= self.limits.max_parked {
            return Err((ErrorCode::RelayFull, "too many parked calls".into()));
        }
        let code = loop {
            let c = format!("{:06}", rng.random_range(0..1_000_000u32));
            if !self.parked.contains_key(&c) {
                break c;
            }
        };
        let expires = now + self.limits.park_ttl;
        self.parked.insert(
            code.clone(),
            Parked {
                call,
                tenant: tenant.to_string(),
                expires,
            },
        );
        timers.set(expires, Timer::Parked(code.clone()));
        Ok(code)
    }

    fn retrieve_rate(&self) -> (f64, u32) {
        let per_min = self.limits.retrieve_attempts_per_minute.max(1);
        (f64::from(per_min) / 60.0, per_min)
    }

    /// The call parked under `code` for `user` (`user@tenant`) of `tenant`, still parked.
    /// Only wrong codes spend the user's budget; an exhausted one refuses every attempt.
    pub(super) fn find_parked(
        &mut self,
        now: Instant,
        timers: &mut Timers,
        user: &str,
        tenant: &str,
        code: &str,
    ) -> Result<String, Refusal> {
        let (rate, burst) = self.retrieve_rate();
        if let Some(b) = self.retrieves.get_mut(user) {
            b.refill(now, rate, burst);
            if b.tokens < 1.0 {
                return Err((
                    ErrorCode::RateLimited,
                    "too many wrong pickup codes; try again later".into(),
                ));
            }
        }
        let found = self
            .parked
            .get(code)
            .filter(|p| p.tenant == tenant && p.expires > now)
            .map(|p| p.call.clone());
        let Some(call) = found else {
            let fresh = !self.retrieves.contains_key(user);
            let b = self
                .retrieves
                .entry(user.to_string())
                .or_insert_with(|| Bucket::full(burst, now));
            b.tokens -= 1.0;
            if fresh {
                timers.set(now + BUCKET_CHECK, Timer::RetrieveBucket(user.to_string()));
            }
            return Err((
                ErrorCode::BadRequest,
                "no call is parked under that code".into(),
            ));
        };
        Ok(call)
    }

    /// The call parked under `code` is being retrieved: it is parked no more.
    pub(super) fn unpark(&mut self, timers: &mut Timers, code: &str) {
        self.parked.remove(code);
        timers.cancel(&Timer::Parked(code.to_string()));
    }

    /// [`Timer::Invite`] fired.
    pub(super) fn expire_invite(&mut self, now: Instant, key: String, call: String) {
        let k = (key, call);
        if self.invites.get(&k).is_some_and(|i| i.expires <= now) {
            self.invites.remove(&k);
        }
    }

    /// [`Timer::Parked`] fired.
    pub(super) fn expire_parked(&mut self, now: Instant, code: &str) {
        if self.parked.get(code).is_some_and(|p| p.expires <= now) {
            self.parked.remove(code);
        }
    }

    /// [`Timer::RetrieveBucket`] fired: refill `user`'s bucket, and drop it once full.
    pub(super) fn refill_bucket(&mut self, now: Instant, timers: &mut Timers, user: String) {
        let (rate, burst) = self.retrieve_rate();
        if let Some(b) = self.retrieves.get_mut(&user) {
            b.refill(now, rate, burst);
            if b.tokens >= f64::from(burst) {
                self.retrieves.remove(&user);
            } else {
                timers.set(now + BUCKET_CHECK, Timer::RetrieveBucket(user));
            }
        }
    }

    /// Connections in the lobby, invitations, parked calls.
    #[cfg(test)]
    pub(super) fn sizes(&self) -> (usize, usize, usize) {
        (
            self.idle.values().map(Vec::len).sum(),
            self.invites.len(),
            self.parked.len(),
        )
    }

    /// Whether `conn` is in the lobby as `key`.
    #[cfg(test)]
    pub(super) fn holds(&self, key: &str, conn: ConnId) -> bool {
        self.idle.get(key).is_some_and(|v| v.contains(&conn))
    }

    /// Every lobby entry, for the plane's cross-part check.
    pub(super) fn entries(&self) -> impl Iterator<Item = (&str, ConnId)> {
        self.idle
            .iter()
            .flat_map(|(k, v)| v.iter().map(move |c| (k.as_str(), *c)))
    }

    /// Whether `t` (a lobby timer) has its live entry.
    pub(super) fn owns_timer(&self, t: &Timer) -> bool {
        match t {
            Timer::Invite(k, c) => self.invites.contains_key(&(k.clone(), c.clone())),
            Timer::Parked(code) => self.parked.contains_key(code),
            Timer::RetrieveBucket(user) => self.retrieves.contains_key(user),
            _ => false,
        }
    }

    /// Its own bounds, and a timer for each entry that expires.
    pub(super) fn check(&self, timers: &Timers) -> Result<(), String> {
        if self.invites.len() > self.limits.max_invites {
            return Err(format!("lobby: {} invitations", self.invites.len()));
        }
        if self.parked.len() > self.limits.max_parked {
            return Err(format!("lobby: {} parked calls", self.parked.len()));
        }
        if self.idle.values().any(Vec::is_empty) {
            return Err("lobby: an empty entry".into());
        }
        for (k, c) in self.invites.keys() {
            if timers
                .deadline(&Timer::Invite(k.clone(), c.clone()))
                .is_none()
            {
                return Err(format!("lobby: invitation of {k} without a timer"));
            }
        }
        for code in self.parked.keys() {
            if timers.deadline(&Timer::Parked(code.clone())).is_none() {
                return Err("lobby: a parked call without a timer".into());
            }
        }
        for user in self.retrieves.keys() {
            if timers
                .deadline(&Timer::RetrieveBucket(user.clone()))
                .is_none()
            {
                return Err(format!("lobby: bucket of {user} without a timer"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn limits() -> LobbyLimits {
        LobbyLimits {
            max_invites: 2,
            max_parked: 1,
            invite_ttl: Duration::from_secs(120),
            park_ttl: Duration::from_secs(60),
            retrieve_attempts_per_minute: 2,
        }
    }

    /// Fire due timers into the lobby, as the plane does.
    fn run(l: &mut Lobby, t: &mut Timers, now: Instant) {
        while let Some(timer) = t.pop_due(now) {
            match timer {
                Timer::Invite(k, c) => l.expire_invite(now, k, c),
                Timer::Parked(code) => l.expire_parked(now, &code),
                Timer::RetrieveBucket(u) => l.refill_bucket(now, t, u),
                other => panic!("not a lobby timer: {other:?}"),
            }
            l.check(t).expect("consistent after each timer");
        }
    }

    #[test]
    fn invitations_are_bounded_expire_and_are_used_once() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        let mut l = Lobby::new(limits());
        // Nobody in the lobby: nothing to invite, nothing kept.
        assert_eq!(l.invite(t0, &mut t, "a@t", "c", None), Ok(None));
        l.enter("a@t".into(), 1);
        l.enter("a@t".into(), 2);
        l.enter("b@t".into(), 3);
        assert_eq!(l.invite(t0, &mut t, "a@t", "c", None), Ok(Some(vec![1, 2])));
        assert_eq!(l.invite(t0, &mut t, "b@t", "c", Some(7)), Ok(Some(vec![3])));
        // At the bound: a third is refused, a renewed one is not.
        l.enter("d@t".into(), 4);
        assert_eq!(
            l.invite(t0, &mut t, "d@t", "c", None).map_err(|e| e.0),
            Err(ErrorCode::RelayFull)
        );
        let later = t0 + Duration::from_secs(60);
        assert!(l.invite(later, &mut t, "a@t", "c", None).is_ok());
        assert_eq!(t.len(), 2, "one timer per invitation");
        l.check(&t).expect("consistent");
        // b's expires at 120 s, a's renewed one at 180 s.
        run(&mut l, &mut t, t0 + Duration::from_secs(120));
        assert!(!l.invited(t0 + Duration::from_secs(120), "b@t", "c"));
        assert!(l.invited(t0 + Duration::from_secs(120), "a@t", "c"));
        assert_eq!(l.sizes().1, 1);
        // Used up by a join: gone, timer and all.
        let i = l.take_invite(later, &mut t, "a@t", "c").expect("live");
        assert_eq!(i.replaces, None);
        assert!(t.is_empty());
        assert!(l.take_invite(later, &mut t, "a@t", "c").is_none());
        l.check(&t).expect("consistent");
        // The lobby itself: an entry per connection, gone with its last one.
        l.leave("a@t", 1);
        l.leave("a@t", 2);
        assert!(!l.holds("a@t", 2));
        assert_eq!(l.sizes().0, 2);
        assert_eq!(l.find(|c| c == 3), Some("b@t"));
    }

    #[test]
    fn parked_calls_are_bounded_expire_and_wrong_codes_are_rate_limited() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        let mut rng = StdRng::from_seed([3; 32]);
        let mut l = Lobby::new(limits());
        let code = l.park(t0, &mut t, &mut rng, "c".into(), "t").expect("room");
        assert_eq!(
            l.park(t0, &mut t, &mut rng, "d".into(), "t")
                .map_err(|e| e.0),
            Err(ErrorCode::RelayFull)
        );
        // Another tenant's user cannot find it, and spends a try.
        let wrong = |l: &mut Lobby, t: &mut Timers, at, user, tenant, code: &str| {
            l.find_parked(at, t, user, tenant, code).map_err(|e| e.0)
        };
        assert_eq!(
            wrong(&mut l, &mut t, t0, "x@u", "u", &code),
            Err(ErrorCode::BadRequest)
        );
        assert_eq!(
            wrong(&mut l, &mut t, t0, "x@u", "u", "000000"),
            Err(ErrorCode::BadRequest)
        );
        // Two tries a minute: the third is refused even with the right code's shape.
        assert_eq!(
            wrong(&mut l, &mut t, t0, "x@u", "u", &code),
            Err(ErrorCode::RateLimited)
        );
        assert_eq!(wrong(&mut l, &mut t, t0, "a@t", "t", &code), Ok("c".into()));
        l.check(&t).expect("consistent");
        // The parked call expires at 60 s; the bucket refills and goes by then too.
        run(&mut l, &mut t, t0 + Duration::from_secs(60));
        assert_eq!(l.sizes().2, 0);
        assert!(t.is_empty(), "{t:?}");
        assert_eq!(
            wrong(
                &mut l,
                &mut t,
                t0 + Duration::from_secs(61),
                "a@t",
                "t",
                &code
            ),
            Err(ErrorCode::BadRequest)
        );
        // Retrieved: parked no more, its timer gone.
        let code = l
            .park(t0, &mut t, &mut rng, "c".into(), "t")
            .expect("room again");
        l.unpark(&mut t, &code);
        assert!(!l.owns_timer(&Timer::Parked(code.clone())));
        assert!(t.deadline(&Timer::Parked(code)).is_none());
    }
}
