//! The one task that drives the control plane: it feeds the plane every event (signalling
//! frames, connections, media-path news) with the time, and carries out its outputs in
//! the order they were made, and counts what the plane reports (the core records no
//! metrics itself). It sleeps only until the plane's next deadline.

use super::capture::Capture;
use super::cascade::Cascade;
use super::events::{Event, KeyedMedia};
use super::media::{RecvCtl, WorkerMsg};
use super::outq::OutQueue;
use crate::core::plane::{ConnId, ControlPlane, Input, Output};
use crate::core::PeerId;
use crate::metrics::Metrics;
use blindrelay_transport::webrtc_dtls::conn::DTLSConn;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::debug;

/// How long a DTLS close_notify may take.
const DTLS_CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// The media path's control inputs.
#[derive(Clone)]
pub struct MediaControl {
    /// Each forwarding loop's control queue, by worker index.
    pub workers: Vec<mpsc::Sender<WorkerMsg>>,
    pub recv: mpsc::Sender<RecvCtl>,
}

pub(super) struct Driver {
    pub(super) media: MediaControl,
    pub(super) capture: Option<Arc<Capture>>,
    pub(super) conns: HashMap<ConnId, Arc<OutQueue>>,
    /// Keyed participants whose contexts wait for the plane's `Attach`.
    pub(super) pending: HashMap<PeerId, Box<KeyedMedia>>,
    /// DTLS associations of attached participants, for close_notify at removal.
    pub(super) dtls: HashMap<PeerId, Arc<DTLSConn>>,
    /// During shutdown: the close_notify tasks to wait for.
    pub(super) closing: Option<Vec<JoinHandle<()>>>,
    /// A cluster node's half of calls that span nodes.
    pub(super) cascade: Option<Cascade>,
}

/// Run the control plane until every event sender is gone.
pub async fn run(
    mut plane: ControlPlane,
    mut events: mpsc::Receiver<Event>,
    media: MediaControl,
    capture: Option<Arc<Capture>>,
    metrics: Arc<Metrics>,
    cascade: Option<Cascade>,
) {
    let mut d = Driver {
        media,
        capture,
        conns: HashMap::new(),
        pending: HashMap::new(),
        dtls: HashMap::new(),
        closing: None,
        cascade,
    };
    loop {
        let deadline = plane.poll_timeout();
        let wake = deadline
            .map(tokio::time::Instant::from_std)
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        let ev = tokio::select! {
            ev = events.recv() => match ev {
                Some(e) => Some(e),
                None => return,
            },
            _ = tokio::time::sleep_until(wake), if deadline.is_some() => None,
        };
        let now = Instant::now();
        let mut done = None;
        // A cluster node's events about calls held elsewhere go there, not to the plane.
        let ev = match ev {
            Some(e) if d.cascade.is_some() => d.cascade_event(now, &mut plane, e).await,
            e => e,
        };
        if let Some(ev) = ev {
            match ev {
                Event::Connected { conn, queue } => {
                    d.conns.insert(conn, queue);
                    plane.handle_input(now, Input::Connected { conn });
                }
                Event::Text { conn, text, permit } => {
                    plane.handle_input(now, Input::Text { conn, text });
                    drop(permit);
                }
                Event::Binary { conn } => plane.handle_input(now, Input::Binary { conn }),
                Event::Disconnected { conn } => {
                    d.conns.remove(&conn);
                    plane.handle_input(now, Input::Disconnected { conn });
                }
                Event::Activity { peer } => plane.handle_input(now, Input::Activity { peer }),
                Event::Keyed { peer, media } => {
                    d.pending.insert(peer, media);
                    plane.handle_input(now, Input::Keyed { peer });
                }
                Event::DtlsFailed { peer } => plane.handle_input(now, Input::DtlsFailed { peer }),
                Event::DtlsClosed { peer } => plane.handle_input(now, Input::DtlsClosed { peer }),
                // Media-path news the plane has no part in: it knows no addresses.
                Event::Nominated { peer, addr } => d.nominated(peer, addr).await,
                // Handled by the cascade above (a lone relay has none).
                Event::Link(_) | Event::Routed { .. } => {}
                Event::Shutdown { done: tx } => {
                    d.closing = Some(Vec::new());
                    plane.handle_input(now, Input::Shutdown);
                    done = Some(tx);
                }
            }
        }
        plane.handle_timeout(now);
        // Counted before carried out: a client that sees an effect (its `joined`, the
        // offers that follow) and then scrapes `/metrics` finds it counted, since carrying
        // out the outputs awaits.
        while let Some(r) = plane.poll_report() {
            metrics.record(&r);
        }
        while let Some(o) = plane.poll_output() {
            let o = match d.cascade.is_some() {
                true => d.cascade_output(o).await,
                false => Some(o),
            };
            if let Some(o) = o {
                d.execute(o).await;
            }
        }
        // Keyed, but the plane had no one to attach (left during the handshake).
        let orphans: Vec<Box<KeyedMedia>> = d.pending.drain().map(|(_, m)| m).collect();
        for m in orphans {
            d.closing_task(m.dtls);
        }
        if let Some(tx) = done {
            for t in d.closing.take().unwrap_or_default() {
                let _ = t.await;
            }
            let _ = tx.send(());
        }
    }
}

impl Driver {
    /// The participant's ICE agent nominated the pair at `addr`, and the receive loop
    /// moved it there. Its forwarding loop must send there too: every loop is told (the
    /// driver does not track which holds it), after whatever was queued for it before, so
    /// a merge in progress carries the new address or gets it at the target. One not
    /// attached yet needs nothing: its address is read from its conn at `Attach`.
    pub(super) async fn nominated(&mut self, peer: PeerId, addr: std::net::SocketAddr) {
        // Before its loop learns of it, so before the capture sees its packets from there.
        if let Some(c) = &self.capture {
            c.on_move(peer, addr);
        }
        for w in &self.media.workers {
            let _ = w.send(WorkerMsg::SetAddr(peer, addr)).await;
        }
    }

    pub(super) fn closing_task(&mut self, conn: Arc<DTLSConn>) {
        let t = tokio::spawn(async move {
            let _ = tokio::time::timeout(DTLS_CLOSE_TIMEOUT, conn.close()).await;
        });
        if let Some(c) = &mut self.closing {
            c.push(t);
        }
    }

    async fn execute(&mut self, o: Output) {
        match o {
            Output::Send { conn, msg } => {
                if let Some(q) = self.conns.get(&conn) {
                    // Our own enums always serialize.
                    let text = serde_json::to_string(&msg)
                        .unwrap_or_else(|_| unreachable!("ServerMessage serializes"));
                    if !q.push(text) {
                        debug!("message to a closed or slow connection dropped");
                    }
                }
            }
            Output::Close { conn, reason } => {
                if let Some(q) = self.conns.get(&conn) {
                    q.close(reason.as_str());
                }
            }
            Output::IceAdd(p) => {
                let _ = self.media.recv.send(RecvCtl::AddIce(Box::new(p))).await;
            }
            Output::MediaRemove { peer, ufrag } => self.media_remove(peer, ufrag).await,
            Output::Attach {
                peer,
                call_key,
                worker,
                tables,
                sender,
            } => {
                if let Some(m) = self.pending.remove(&peer) {
                    self.attach(peer, call_key, worker, *tables, &sender, *m)
                        .await;
                }
            }
            Output::Receive {
                peer,
                worker,
                ssrcs,
            } => {
                if let Some(w) = self.media.workers.get(worker) {
                    let _ = w.send(WorkerMsg::Receive(peer, ssrcs)).await;
                }
            }
            Output::MaxHeight {
                peer,
                worker,
                track,
                height,
            } => {
                if let Some(w) = self.media.workers.get(worker) {
                    let _ = w.send(WorkerMsg::MaxHeight(peer, track, height)).await;
                }
            }
            Output::Move {
                peer,
                ufrag,
                call_key,
                from_worker,
                to_worker,
            } => {
                self.move_peer(peer, ufrag, call_key, from_worker, to_worker)
                    .await
            }
            Output::CallStarted { call, call_key } => {
                if let Some(c) = &self.capture {
                    c.on_join(&call, call_key);
                }
            }
            Output::CallEnded { .. } => {}
        }
    }

    /// Forget a participant on the media path and close its DTLS association.
    pub(super) async fn media_remove(&mut self, peer: PeerId, ufrag: String) {
        let _ = self
            .media
            .recv
            .send(RecvCtl::RemovePeer { peer, ufrag })
            .await;
        // Every loop: the plane does not say which loop holds the participant, and
        // a loop that does not hold it ignores this. (A merge's AddPeer is always
        // queued before this: see `Output::Move`.)
        for w in &self.media.workers {
            let _ = w.send(WorkerMsg::RemovePeer(peer)).await;
        }
        if let Some(m) = self.pending.remove(&peer) {
            self.closing_task(m.dtls);
        }
        if let Some(c) = &self.capture {
            c.on_leave(peer);
        }
        if let Some(c) = self.dtls.remove(&peer) {
            self.closing_task(c);
        }
    }

    /// Hand a keyed participant's contexts to its forwarding loop.
    pub(super) async fn attach(
        &mut self,
        peer: PeerId,
        call_key: crate::core::CallKey,
        worker: usize,
        tables: crate::core::forward::PeerTables,
        sender: &crate::core::plane::SenderInfo,
        m: KeyedMedia,
    ) {
        let Some(w) = self.media.workers.get(worker) else {
            return;
        };
        // Where it is now: a nomination that moved it before this is in its conn
        // already, and one after this is a `Nominated` event still to come.
        let addr = m.conn.remote();
        // Before its loop learns of it, so before the capture sees its packets.
        if let Some(c) = &self.capture {
            c.on_attach(peer, call_key, addr, sender);
        }
        self.dtls.insert(peer, m.dtls);
        let _ = w
            .send(WorkerMsg::AddPeer {
                peer,
                call: call_key,
                addr,
                inbound: Box::new(m.inbound.into()),
                outbound: Box::new(m.outbound.into()),
                tables: Box::new(tables),
            })
            .await;
    }

    /// Re-home a participant on another forwarding loop (merge).
    async fn move_peer(
        &mut self,
        peer: PeerId,
        ufrag: String,
        call_key: crate::core::CallKey,
        from_worker: usize,
        to_worker: usize,
    ) {
        if let (Some(from), Some(to)) = (
            self.media.workers.get(from_worker),
            self.media.workers.get(to_worker),
        ) {
            // The driver carries the hop state over itself, waiting for the old
            // loop's answer (it answers at its next round): the participant's
            // AddPeer is then queued at the target before anything the plane says
            // about it later (its Receive, its RemovePeer), in that order. A loop
            // forwarding it on its own could land it after the RemovePeer and leave
            // a ghost there.
            let (reply, taken) = oneshot::channel();
            let _ = from.send(WorkerMsg::TakePeer(peer, reply)).await;
            if let Ok(t) = taken.await {
                let _ = to
                    .send(WorkerMsg::AddPeer {
                        peer,
                        call: call_key,
                        addr: t.addr,
                        inbound: Box::new(t.inbound),
                        outbound: Box::new(t.outbound),
                        tables: Box::new(t.tables),
                    })
                    .await;
            }
        }
        let _ = self
            .media
            .recv
            .send(RecvCtl::SetWorker {
                peer,
                ufrag,
                worker: to_worker,
                call_key,
            })
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::super::media::{control, CONTROL_QUEUE};
    use super::*;
    use crate::core::forward::PeerTables;
    use crate::core::CallKey;
    use crate::hop::{MediaHop, SrtpHop};
    use blindrelay_transport::fast_srtp::FastSrtpContext;
    use blindrelay_transport::hop::HopContext;

    const MOVER: PeerId = 1;
    const MEMBER: PeerId = 2;
    const FROM_CALL: CallKey = 10;
    const TO_CALL: CallKey = 20;

    type Forwarder = crate::core::forward::Forwarder<MediaHop>;

    fn hop(key: u8) -> MediaHop {
        MediaHop::Srtp(SrtpHop(HopContext::Fast(Box::new(
            FastSrtpContext::new(&[key; 16], &[key; 12]).expect("16-byte key, 12-byte salt"),
        ))))
    }

    fn addr(port: u16) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// Two forwarding loops driven by hand, so the test decides who runs when: loop 0
    /// holds the participant about to be merged away, loop 1 the call it is merged into.
    struct Loops {
        fwd: [Forwarder; 2],
        rx: [mpsc::Receiver<WorkerMsg>; 2],
        _recv: mpsc::Receiver<RecvCtl>,
    }

    fn setup() -> (Driver, Loops) {
        let (t0, r0) = mpsc::channel(CONTROL_QUEUE);
        let (t1, r1) = mpsc::channel(CONTROL_QUEUE);
        let (trecv, rrecv) = mpsc::channel(64);
        let d = Driver {
            media: MediaControl {
                workers: vec![t0, t1],
                recv: trecv,
            },
            capture: None,
            conns: HashMap::new(),
            pending: HashMap::new(),
            dtls: HashMap::new(),
            closing: None,
            cascade: None,
        };
        let mut a = Forwarder::new(None);
        a.add_peer(
            MOVER,
            FROM_CALL,
            addr(5000),
            hop(1),
            hop(2),
            PeerTables::standard(&[111]),
        );
        let mut b = Forwarder::new(None);
        b.add_peer(
            MEMBER,
            TO_CALL,
            addr(5001),
            hop(3),
            hop(4),
            PeerTables::standard(&[222]),
        );
        let loops = Loops {
            fwd: [a, b],
            rx: [r0, r1],
            _recv: rrecv,
        };
        (d, loops)
    }

    fn merge() -> Output {
        Output::Move {
            peer: MOVER,
            ufrag: "mover".into(),
            call_key: TO_CALL,
            from_worker: 0,
            to_worker: 1,
        }
    }

    impl Loops {
        /// Run `driver` to completion while the loops apply their control messages, the
        /// target loop (1) always first when both have work; then drain both the same way.
        async fn run_with(&mut self, driver: impl std::future::Future<Output = ()>) {
            let Loops { fwd, rx, .. } = self;
            let [a, b] = fwd;
            let [ra, rb] = rx;
            tokio::pin!(driver);
            loop {
                tokio::select! {
                    biased;
                    Some(m) = rb.recv() => control(b, m),
                    Some(m) = ra.recv() => control(a, m),
                    () = &mut driver => break,
                }
            }
            loop {
                if let Ok(m) = rb.try_recv() {
                    control(b, m);
                } else if let Ok(m) = ra.try_recv() {
                    control(a, m);
                } else {
                    break;
                }
            }
        }
    }

    /// A merge re-homes the participant: afterwards only the target loop forwards for it.
    #[tokio::test(flavor = "current_thread")]
    async fn a_merge_moves_the_participant_to_the_target_loop() {
        let (mut d, mut loops) = setup();
        loops
            .run_with(async {
                d.execute(merge()).await;
            })
            .await;
        assert!(!loops.fwd[0].has_peer(MOVER));
        assert!(loops.fwd[1].has_peer(MOVER));
        assert_eq!(loops.fwd[1].peer_count(), 2);
    }

    /// A participant that leaves right after a merge, before its old loop handled the
    /// move, is gone from every loop: no ghost stays behind at the target, where its
    /// call's media would still be sealed and sent to its address.
    #[tokio::test(flavor = "current_thread")]
    async fn a_participant_leaving_right_after_a_merge_leaves_no_ghost() {
        let (mut d, mut loops) = setup();
        loops
            .run_with(async {
                d.execute(merge()).await;
                d.execute(Output::MediaRemove {
                    peer: MOVER,
                    ufrag: "mover".into(),
                })
                .await;
            })
            .await;
        assert!(!loops.fwd[0].has_peer(MOVER), "left at the old loop");
        assert!(!loops.fwd[1].has_peer(MOVER), "a ghost at the target loop");
        assert!(loops.fwd[1].has_peer(MEMBER));
    }

    /// A nomination that moved a participant reaches the loop that holds it whether the
    /// driver learns of it before or after a merge re-homes it: the merged participant is
    /// sent to at its new address, and no one else moves.
    #[tokio::test(flavor = "current_thread")]
    async fn a_nomination_reaches_the_participant_across_a_merge() {
        for before in [true, false] {
            let (mut d, mut loops) = setup();
            loops
                .run_with(async {
                    if before {
                        d.nominated(MOVER, addr(6000)).await;
                    }
                    d.execute(merge()).await;
                    if !before {
                        d.nominated(MOVER, addr(6000)).await;
                    }
                })
                .await;
            assert!(!loops.fwd[0].has_peer(MOVER));
            let moved = loops.fwd[1].take_peer(MOVER).expect("merged");
            assert_eq!(
                moved.addr,
                addr(6000),
                "nominated before the merge: {before}"
            );
            let member = loops.fwd[1].take_peer(MEMBER).expect("still there");
            assert_eq!(member.addr, addr(5001));
        }
    }
}
