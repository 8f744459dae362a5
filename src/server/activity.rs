//! Per-connection activity: the connection's I/O ([`super::conn_io`]) notes that bytes moved, the service notes requests
//! in flight and finished keep-alive responses, and the watchdog ([`Watchdog::tick`]) tells a slow request head
//! from an idle keep-alive connection. Requests are also counted across the listeners ([`RequestsInFlight`]), for
//! shutdown.
//!
//! The hot path only stores relaxed atomic flags (no clock reads) and counts in [`RequestsInFlight`]; the watchdog counts
//! its own ticks, so both timeouts are accurate to one watchdog period, and never early: a connection is cut
//! after at least the configured time, at most one period more.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU32, Ordering::Relaxed},
        Arc,
    },
    time::Duration,
};

use super::in_flight::RequestsInFlight;

/// What the watchdog should do with a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    Keep,
    HeaderTimeout,
    Idle,
}

/// Shared between a connection's I/O, its service and its watchdog.
#[derive(Debug)]
pub(super) struct Activity {
    /// Requests in flight on every connection of the listeners served together (this one's are among them).
    requests: RequestsInFlight,
    /// Bytes moved since the watchdog last looked.
    moved: AtomicBool,
    /// A request head is being received (or owed: a new connection owes its first one).
    head_pending: AtomicBool,
    /// Requests whose response has not been handed to the socket in full.
    in_flight: AtomicU32,
    /// The last response was sent in full and hyper will keep the connection: it may be parked.
    park: AtomicBool,
    /// The current request's body has been read to its end (or it had none).
    request_body_done: AtomicBool,
    /// The current request's body was dropped before its end: hyper will close the connection after the response.
    request_body_abandoned: AtomicBool,
    /// HTTP/2: bytes that arrive with no request in flight are frames (pings, window updates), not a head.
    http2: AtomicBool,
    /// A request began since the watchdog last looked (it may have ended too).
    began: AtomicBool,
}

/// Marks a request in flight until its response is done (or abandoned).
#[derive(Debug)]
pub(super) struct InRequest(Arc<Activity>);

impl InRequest {
    /// Whether the response should close its HTTP/1 connection: the listeners have stopped. (An HTTP/2
    /// connection is closed by hyper's GOAWAY instead.)
    pub(super) fn closes_http1(&self) -> bool {
        !self.0.is_http2() && self.0.requests.stopping()
    }

    /// Whether the request's body was dropped unread (an answer given before the body arrived): hyper then closes
    /// the HTTP/1 connection after the response, which must say so.
    pub(super) fn body_abandoned(&self) -> bool {
        !self.0.is_http2() && self.0.request_body_abandoned.load(Relaxed)
    }

    /// The response has been handed to the socket in full; `keeps_alive` if neither side asked to close.
    pub(super) fn done(self, keeps_alive: bool) {
        // Parking is safe only if hyper has nothing left to read of this request either.
        let park = keeps_alive && self.0.request_body_done.load(Relaxed);
        self.0.park.store(park, Relaxed);
    }
}

impl Drop for InRequest {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
        self.0.moved.store(true, Relaxed);
        self.0.requests.end();
    }
}

impl Activity {
    pub(super) fn new(requests: RequestsInFlight) -> Self {
        Self {
            requests,
            moved: AtomicBool::new(false),
            head_pending: AtomicBool::new(true),
            in_flight: AtomicU32::new(0),
            park: AtomicBool::new(false),
            request_body_done: AtomicBool::new(true),
            request_body_abandoned: AtomicBool::new(false),
            http2: AtomicBool::new(false),
            began: AtomicBool::new(false),
        }
    }

    /// The connection speaks HTTP/2.
    pub(super) fn serving_http2(&self) {
        self.http2.store(true, Relaxed);
    }

    /// Whether the connection speaks HTTP/2.
    pub(super) fn is_http2(&self) -> bool {
        self.http2.load(Relaxed)
    }

    /// A request arrived; `body_done` if it has no body.
    pub(super) fn request_body(&self, body_done: bool) {
        self.request_body_done.store(body_done, Relaxed);
        self.request_body_abandoned.store(false, Relaxed);
    }

    /// The current request's body was dropped; abandoned unless it had been read to its end.
    pub(super) fn request_body_dropped(&self) {
        if !self.request_body_done.load(Relaxed) {
            self.request_body_abandoned.store(true, Relaxed);
        }
    }

    /// The current request's body has been read to its end.
    pub(super) fn request_body_ended(&self) {
        self.request_body_done.store(true, Relaxed);
    }

    /// Forget a completed keep-alive response.
    pub(super) fn take_park(&self) -> bool {
        self.park.swap(false, Relaxed)
    }

    /// The last response allows parking (forgotten now), and no request is in flight.
    pub(super) fn idle_after_keep_alive(&self) -> bool {
        self.in_flight.load(Relaxed) == 0 && self.take_park()
    }

    /// Bytes of the client arrived.
    pub(super) fn read(&self) {
        self.moved.store(true, Relaxed);
        if self.in_flight.load(Relaxed) == 0 && !self.http2.load(Relaxed) {
            self.head_pending.store(true, Relaxed);
        }
    }

    /// Bytes went to the client.
    pub(super) fn wrote(&self) {
        self.moved.store(true, Relaxed);
    }

    /// A request head is complete: it is in flight until the guard drops.
    pub(super) fn begin(self: &Arc<Self>) -> InRequest {
        self.requests.begin();
        self.in_flight.fetch_add(1, Relaxed);
        self.head_pending.store(false, Relaxed);
        self.began.store(true, Relaxed);
        InRequest(self.clone())
    }
}

/// The watchdog's own count of quiet ticks.
#[derive(Debug)]
pub(super) struct Watchdog {
    head_ticks: u32,
    idle_ticks: u32,
    /// Ticks since a request was last in flight.
    since_request: u32,
    head_limit: u32,
    idle_limit: u32,
}

impl Watchdog {
    /// For timeouts measured in ticks of `period`.
    pub(super) fn new(period: Duration, header_timeout: Duration, idle_timeout: Duration) -> Self {
        let ticks =
            |d: Duration| (d.as_nanos().div_ceil(period.as_nanos().max(1))).clamp(1, u128::from(u32::MAX)) as u32;
        Self {
            head_ticks: 0,
            idle_ticks: 0,
            since_request: 0,
            // A head can start anywhere in the period before the first tick that counts it: one tick more, so
            // a head that started just before a tick still gets the whole header_read_timeout. (Idle ticks
            // count only after a quiet period, which already has that margin.)
            head_limit: ticks(header_timeout).saturating_add(1),
            idle_limit: ticks(idle_timeout),
        }
    }

    /// Called once per period.
    pub(super) fn tick(&mut self, a: &Activity) -> Verdict {
        let moved = a.moved.swap(false, Relaxed);
        if a.in_flight.load(Relaxed) > 0 {
            self.head_ticks = 0;
            self.idle_ticks = 0;
            self.since_request = 0;
            a.began.store(false, Relaxed);
            return Verdict::Keep;
        }
        // A request that began and ended between two ticks counts as one in flight at this tick.
        self.since_request = if a.began.swap(false, Relaxed) {
            0
        } else {
            self.since_request.saturating_add(1)
        };
        // HTTP/2 frames with no request in flight count as activity only for one idle time-out after the last
        // request: the tail of its response going out to a slow reader. After that they are pings and window
        // updates, however many a client sends, and must not hold the connection (and its slot) open.
        let moved = moved && !(a.is_http2() && self.since_request > self.idle_limit);
        if a.head_pending.load(Relaxed) {
            self.head_ticks += 1;
            if self.head_ticks >= self.head_limit {
                return Verdict::HeaderTimeout;
            }
        } else {
            self.head_ticks = 0;
        }
        self.idle_ticks = if moved { 0 } else { self.idle_ticks + 1 };
        if self.idle_ticks >= self.idle_limit {
            return Verdict::Idle;
        }
        Verdict::Keep
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn activity() -> Activity {
        Activity::new(RequestsInFlight::new(crate::shutdown::Shutdown::new().signal()))
    }

    #[test]
    fn tells_a_slow_head_from_an_idle_connection() {
        let a = Arc::new(activity());
        // Period 1 s: header timeout 3 ticks, idle timeout 6 ticks.
        let mut w = Watchdog::new(Duration::from_secs(1), Duration::from_secs(3), Duration::from_secs(6));
        let verdicts = |w: &mut Watchdog, n: usize| (0..n).map(|_| w.tick(&a)).collect::<Vec<_>>();
        // A new connection that sends nothing owes its first head: cut at the fourth tick, since the head may
        // have begun just before the first one (never before the full 3 s).
        let v = verdicts(&mut w, 4);
        assert_eq!(&v[..3], &[Verdict::Keep; 3]);
        assert_eq!(v[3], Verdict::HeaderTimeout);

        let mut w = Watchdog::new(Duration::from_secs(1), Duration::from_secs(3), Duration::from_secs(6));
        {
            let _r = a.begin();
            assert!(
                verdicts(&mut w, 100).iter().all(|v| *v == Verdict::Keep),
                "request in flight"
            );
        }
        // Idle keep-alive: no head pending, nothing moving: idle after 6 quiet ticks (the first tick still sees the
        // end of the request), never a header timeout.
        let v = verdicts(&mut w, 7);
        assert_eq!(&v[..6], &[Verdict::Keep; 6]);
        assert_eq!(v[6], Verdict::Idle);
        // Bytes of a new head arrive (just before a tick) and stop: a header timeout even though bytes moved,
        // but only after the full 3 s.
        let mut w = Watchdog::new(Duration::from_secs(1), Duration::from_secs(3), Duration::from_secs(6));
        a.read();
        assert_eq!(w.tick(&a), Verdict::Keep);
        a.read();
        assert_eq!(w.tick(&a), Verdict::Keep);
        assert_eq!(w.tick(&a), Verdict::Keep, "2-3 s since the head began");
        assert_eq!(w.tick(&a), Verdict::HeaderTimeout);
    }

    #[test]
    fn http2_frames_between_requests_are_neither_a_slow_head_nor_activity_for_long() {
        let a = Arc::new(activity());
        a.serving_http2();
        drop(a.begin());
        let mut w = Watchdog::new(Duration::from_secs(1), Duration::from_secs(3), Duration::from_secs(6));
        // Frames keep coming and going with no request in flight (a response tail to a slow reader, or pings):
        // never a header time-out; activity for the 6 s after the request (the first tick sees the request),
        // then idle 6 s later, however busy.
        let v: Vec<_> = (0..13)
            .map(|_| {
                a.read();
                a.wrote();
                w.tick(&a)
            })
            .collect();
        assert_eq!(&v[..12], &[Verdict::Keep; 12]);
        assert_eq!(v[12], Verdict::Idle);
        // A request, even one that begins and ends between two ticks, starts the count again.
        drop(a.begin());
        let v: Vec<_> = (0..7)
            .map(|_| {
                a.wrote();
                w.tick(&a)
            })
            .collect();
        assert_eq!(v, [Verdict::Keep; 7]);
    }

    #[test]
    fn parking_needs_a_keep_alive_response_and_a_request_body_read_to_its_end() {
        let a = Arc::new(activity());
        a.request_body(false);
        a.begin().done(true);
        assert!(!a.idle_after_keep_alive(), "request body left unread");
        a.request_body(false);
        let request = a.begin();
        a.request_body_ended();
        assert!(!a.idle_after_keep_alive(), "still in flight");
        request.done(true);
        assert!(a.idle_after_keep_alive());
        assert!(!a.idle_after_keep_alive(), "taken once");
        a.request_body(true);
        a.begin().done(true);
        a.request_body(true);
        a.begin().done(false);
        assert!(!a.idle_after_keep_alive(), "the last response closes the connection");
    }
}
