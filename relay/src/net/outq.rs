//! A connection's outbound queue: bounded in bytes, pushed to by the control plane's
//! driver without waiting, drained by the connection's task.

use std::collections::VecDeque;
use std::sync::Mutex;
use tokio::sync::Notify;

/// Why a connection ended, as the `reason` label of `blindrelay_signalling_closed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The relay ordered it (see [`crate::core::plane::CloseReason`]).
    Relay(&'static str),
    /// The client closed it, or the TCP connection went away.
    Client,
    ReadError,
    SlowReader,
    WriteTimeout,
}

impl Ended {
    pub fn as_str(self) -> &'static str {
        match self {
            Ended::Relay(r) => r,
            Ended::Client => "client",
            Ended::ReadError => "read_error",
            Ended::SlowReader => "slow_reader",
            Ended::WriteTimeout => "write_timeout",
        }
    }
}

/// Messages queued for one client, bounded in bytes. The control plane's driver pushes
/// without waiting; the connection's task writes them out.
pub struct OutQueue {
    inner: Mutex<OutInner>,
    pub(crate) ready: Notify,
    cap: usize,
}

struct OutInner {
    msgs: VecDeque<String>,
    bytes: usize,
    closed: Option<Ended>,
}

/// What a connection's task finds in its queue.
pub(crate) enum Next {
    Msg(String),
    Close(Ended),
    Empty,
}

impl OutQueue {
    pub fn new(cap: usize) -> Self {
        OutQueue {
            inner: Mutex::new(OutInner {
                msgs: VecDeque::new(),
                bytes: 0,
                closed: None,
            }),
            ready: Notify::new(),
            cap,
        }
    }

    /// Queue a message. Past the cap the client is a slow reader: everything queued is
    /// dropped and the connection is closed. False if the message was not queued.
    pub fn push(&self, text: String) -> bool {
        let mut q = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if q.closed.is_some() {
            return false;
        }
        if q.bytes + text.len() > self.cap {
            q.msgs = VecDeque::new();
            q.bytes = 0;
            q.closed = Some(Ended::SlowReader);
            drop(q);
            self.ready.notify_one();
            return false;
        }
        q.bytes += text.len();
        q.msgs.push_back(text);
        drop(q);
        self.ready.notify_one();
        true
    }

    /// Close after what is queued is written.
    pub fn close(&self, reason: &'static str) {
        let mut q = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if q.closed.is_none() {
            q.closed = Some(Ended::Relay(reason));
        }
        drop(q);
        self.ready.notify_one();
    }

    /// Whether the client fell so far behind that its queue was dropped.
    pub(crate) fn overflowed(&self) -> bool {
        let q = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        q.closed == Some(Ended::SlowReader)
    }

    pub(crate) fn next(&self) -> Next {
        let mut q = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(Ended::SlowReader) = q.closed {
            return Next::Close(Ended::SlowReader);
        }
        match q.msgs.pop_front() {
            Some(m) => {
                q.bytes -= m.len();
                Next::Msg(m)
            }
            None => match q.closed {
                Some(r) => Next::Close(r),
                None => Next::Empty,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(q: &OutQueue) -> (Vec<String>, Option<Ended>) {
        let mut msgs = Vec::new();
        loop {
            match q.next() {
                Next::Msg(m) => msgs.push(m),
                Next::Close(r) => return (msgs, Some(r)),
                Next::Empty => return (msgs, None),
            }
        }
    }

    #[test]
    fn a_slow_reader_loses_its_queue_and_is_closed() {
        let q = OutQueue::new(100);
        assert!(q.push("a".repeat(60)));
        assert!(q.push("b".repeat(40)));
        assert!(!q.overflowed());
        assert!(!q.push("c".into()), "101 bytes is over the cap");
        assert!(q.overflowed());
        assert_eq!(drain(&q), (vec![], Some(Ended::SlowReader)));
        assert!(!q.push("d".into()), "closed for good");
    }

    #[test]
    fn a_relay_close_comes_after_what_was_queued() {
        let q = OutQueue::new(100);
        assert!(q.push("x".into()));
        q.close("removed");
        assert!(!q.push("late".into()));
        assert_eq!(
            drain(&q),
            (vec!["x".to_string()], Some(Ended::Relay("removed")))
        );
        // Bytes are given back as messages leave.
        let q = OutQueue::new(10);
        for _ in 0..5 {
            assert!(q.push("0123456789".into()));
            assert!(matches!(q.next(), Next::Msg(_)));
        }
    }
}
