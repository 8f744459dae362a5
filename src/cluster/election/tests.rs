//! The election loop against the fake API: in memory on tokio's paused clock (the contract's own durations, exact
//! bounds), and over a real socket through the real client (short durations, bounded waits, slack).

use std::sync::Mutex;

use tokio::{sync::oneshot, task::JoinHandle};

use super::*;
use crate::cluster::{
    kube::client,
    test_api::{FakeApi, Fault},
};

const LEASE: &str = "issettled-proxy";

/// The contract's defaults, for the paused clock.
fn contract(identity: &str) -> LeaseSettings {
    LeaseSettings {
        name: LEASE.to_owned(),
        identity: identity.to_owned(),
        lease_duration: Duration::from_secs(15),
        renew_deadline: Duration::from_secs(10),
        retry_period: Duration::from_secs(2),
    }
}

/// Short durations for real time over a socket.
fn short(identity: &str) -> LeaseSettings {
    LeaseSettings {
        name: LEASE.to_owned(),
        identity: identity.to_owned(),
        lease_duration: Duration::from_secs(2),
        renew_deadline: Duration::from_millis(1500),
        retry_period: Duration::from_millis(300),
    }
}

/// One elector running in a task.
struct Replica {
    leadership: Leadership,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
    errors: Arc<Mutex<Vec<&'static str>>>,
}

impl Replica {
    fn spawn(client: kube::Client, settings: LeaseSettings) -> Replica {
        Replica::holding(client, settings, || false)
    }

    /// A replica that holds off competing while `hold` says so (see [`Elector::with_hold`]).
    fn holding(
        client: kube::Client,
        settings: LeaseSettings,
        hold: impl Fn() -> bool + Send + Sync + 'static,
    ) -> Replica {
        let errors = Arc::new(Mutex::new(Vec::new()));
        let sink = errors.clone();
        let on_api_error: OnApiError = Arc::new(move |op| sink.lock().expect("errors lock").push(op));
        let (elector, leadership) = Elector::new(Api::default_namespaced(client), settings, on_api_error);
        let elector = elector.with_hold(hold);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(elector.run(async move {
            let _ = stopped.await;
        }));
        Replica {
            leadership,
            stop: Some(stop),
            task,
            errors,
        }
    }

    async fn stop(&mut self) {
        let _ = self.stop.take().expect("running").send(());
        (&mut self.task).await.expect("the elector ends cleanly");
    }
}

/// Waits until `done`, checking at every change of `replicas`' views and every 10 ms; panics after `bound`.
async fn until(what: &str, bound: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < bound, "{what}: not within {bound:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    started.elapsed()
}

fn leaders(replicas: &[&Replica]) -> usize {
    replicas.iter().filter(|r| r.leadership.is_leader()).count()
}

fn holder(api: &FakeApi) -> Option<String> {
    api.lease(LEASE)
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
        .filter(|h| !h.is_empty())
}

fn spec(api: &FakeApi) -> LeaseSpec {
    api.lease(LEASE).and_then(|l| l.spec).expect("the lease")
}

async fn socket_client(api: &FakeApi) -> kube::Client {
    client(&api.settings(Duration::from_millis(500))).await.expect("client")
}

// --- paused clock: the contract's durations, exact bounds ---

/// The fake API with the Lease, and replica "a" (the contract's durations) leading it.
async fn a_leading() -> (FakeApi, Replica) {
    let api = FakeApi::start().await;
    api.create_lease(LEASE);
    let a = Replica::spawn(api.client_in_memory(), contract("a"));
    until("a leads", Duration::from_secs(1), || a.leadership.is_leader()).await;
    (api, a)
}

#[tokio::test(start_paused = true)]
async fn a_lone_replica_takes_the_free_lease_and_renews_it_every_retry_period() {
    let (api, a) = a_leading().await;
    let view = a.leadership.view();
    assert_eq!((view.leader.as_deref(), view.transitions), (Some("a"), 1));
    let first = spec(&api);
    assert_eq!(first.lease_duration_seconds, Some(15));

    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(a.leadership.is_leader());
    let later = spec(&api);
    assert_eq!(later.lease_transitions, Some(1), "renewals are no transitions");
    assert_eq!(later.acquire_time, first.acquire_time);
    let writes = api.requests().iter().filter(|r| r.starts_with("PUT")).count();
    assert!(
        (29..=32).contains(&writes),
        "one renewal per retry period, without reads: {writes} writes"
    );
    assert!(a.errors.lock().expect("errors").is_empty());
}

#[tokio::test(start_paused = true)]
async fn two_replicas_on_one_lease_never_lead_together() {
    let api = FakeApi::start().await;
    api.create_lease(LEASE);
    let a = Replica::spawn(api.client_in_memory(), contract("a"));
    let b = Replica::spawn(api.client_in_memory(), contract("b"));
    let end = Instant::now() + Duration::from_secs(120);
    while Instant::now() < end {
        assert!(leaders(&[&a, &b]) <= 1, "two leaders");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(leaders(&[&a, &b]), 1);
    let leader = if a.leadership.is_leader() { "a" } else { "b" };
    assert_eq!(holder(&api).as_deref(), Some(leader));
    let follower = if leader == "a" { &b } else { &a };
    assert_eq!(follower.leadership.view().role, Role::Follower);
    assert_eq!(follower.leadership.view().leader.as_deref(), Some(leader));
}

#[tokio::test(start_paused = true)]
async fn a_killed_leader_is_replaced_after_its_lease_and_within_lease_duration_plus_three_retry_periods() {
    let (api, a) = a_leading().await;
    let b = Replica::spawn(api.client_in_memory(), contract("b"));
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(b.leadership.view().role, Role::Follower);

    a.task.abort();
    let took = until("b leads", Duration::from_secs(15 + 3 * 2), || b.leadership.is_leader()).await;
    // a renewed within the last retry period before it died; b must not have moved before that lease ran out.
    assert!(
        took >= Duration::from_secs(15 - 2),
        "b took a live lease after {took:?}"
    );
    assert_eq!(spec(&api).lease_transitions, Some(2));
}

#[tokio::test(start_paused = true)]
async fn a_replica_with_an_unwritten_link_competes_only_once_it_is_written() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let api = FakeApi::start().await;
    api.create_lease(LEASE);
    let unsaved = Arc::new(AtomicBool::new(true));
    let hold = unsaved.clone();
    let a = Replica::holding(api.client_in_memory(), contract("a"), move || {
        hold.load(Ordering::SeqCst)
    });
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(holder(&api), None, "a free Lease is not taken while the link waits");
    assert!(!a.leadership.is_leader());
    assert!(
        api.requests().iter().all(|r| !r.starts_with("PUT")),
        "reads only: {:?}",
        api.requests()
    );
    unsaved.store(false, Ordering::SeqCst);
    until("a leads", Duration::from_secs(2 * 2), || a.leadership.is_leader()).await;
    assert_eq!(holder(&api).as_deref(), Some("a"));
}

#[tokio::test(start_paused = true)]
async fn a_link_the_store_keeps_refusing_holds_a_replica_off_the_lease_for_one_lease_duration_only() {
    let api = FakeApi::start().await;
    api.create_lease(LEASE);
    let a = Replica::holding(api.client_in_memory(), contract("a"), || true);
    tokio::time::sleep(Duration::from_secs(14)).await;
    assert_eq!(holder(&api), None);
    until("a leads", Duration::from_secs(2 * 2), || a.leadership.is_leader()).await;
}

#[tokio::test(start_paused = true)]
async fn a_stopped_leader_releases_and_another_leads_within_two_retry_periods() {
    let (api, mut a) = a_leading().await;
    let b = Replica::spawn(api.client_in_memory(), contract("b"));
    tokio::time::sleep(Duration::from_secs(10)).await;

    a.stop().await;
    assert!(!a.leadership.is_leader());
    let released = spec(&api);
    assert_eq!(
        (released.holder_identity.as_deref(), released.lease_duration_seconds),
        (Some(""), Some(1))
    );
    assert_eq!(released.lease_transitions, Some(1));
    until("b leads", Duration::from_secs(2 * 2), || b.leadership.is_leader()).await;
    assert_eq!(spec(&api).lease_transitions, Some(2));
}

#[tokio::test(start_paused = true)]
async fn a_leader_cut_off_from_the_api_steps_down_at_renew_deadline_for_the_api_only() {
    for fault in [Fault::Unavailable, Fault::Hang] {
        let (api, a) = a_leading().await;
        tokio::time::sleep(Duration::from_secs(5)).await;

        api.set_fault(fault);
        let took = until("a steps down", Duration::from_secs(10), || !a.leadership.is_leader()).await;
        assert!(
            took >= Duration::from_secs(10 - 2),
            "{fault:?}: stepped down early, after {took:?}"
        );
        // A call still hanging at the deadline is known to have failed once its bound fires, an instant later.
        until("a tells why", Duration::from_secs(1), || {
            a.leadership.view().lost_for_api_only
        })
        .await;
        let view = a.leadership.view();
        assert!(view.lost_for_api_only && !view.api_reachable, "{fault:?}: {view:?}");
        assert_eq!(view.role, Role::Candidate);
        assert!(a.errors.lock().expect("errors").contains(&"lease_update"));

        // The API is back and the Lease still names a: a leads again, no transition.
        api.set_fault(Fault::None);
        until("a leads again", Duration::from_secs(4), || a.leadership.is_leader()).await;
        let view = a.leadership.view();
        assert!(!view.lost_for_api_only && view.api_reachable);
        assert_eq!(view.transitions, 1);
    }
}

#[tokio::test(start_paused = true)]
async fn a_leader_whose_loop_no_longer_runs_is_no_leader_past_its_renew_deadline() {
    // As a process woken from SIGSTOP: its refresher may run before its elector has looked at the clock.
    let (_api, a) = a_leading().await;
    a.task.abort();
    let took = until("a is no leader", Duration::from_secs(10), || !a.leadership.is_leader()).await;
    assert!(took >= Duration::from_secs(10 - 2), "{took:?}");
    assert_eq!(a.leadership.view().role, Role::Candidate);
}

#[tokio::test(start_paused = true)]
async fn a_lease_taken_by_another_writer_turns_the_leader_into_a_follower_without_overwriting() {
    let (api, a) = a_leading().await;

    api.take_lease(LEASE, "x");
    until("a follows x", Duration::from_secs(3), || {
        a.leadership.view().role == Role::Follower
    })
    .await;
    assert_eq!(a.leadership.view().leader.as_deref(), Some("x"));
    // The conflicting update was answered 409 and re-read; a writes nothing while x's lease lives.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(holder(&api).as_deref(), Some("x"));
    assert!(
        a.errors.lock().expect("errors").is_empty(),
        "a conflict is no API error"
    );
}

#[tokio::test(start_paused = true)]
async fn a_missing_lease_is_reported_and_retried_until_deploy_creates_it() {
    let api = FakeApi::start().await;
    let a = Replica::spawn(api.client_in_memory(), contract("a"));
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(a.leadership.view().role, Role::Candidate);
    assert!(a.leadership.view().api_reachable, "the API answered");
    let errors = a.errors.lock().expect("errors").clone();
    assert!(
        errors.len() >= 3 && errors.iter().all(|op| *op == "lease_get"),
        "{errors:?}"
    );
    assert!(api.requests().iter().all(|r| r.starts_with("GET")), "nothing created");

    api.create_lease(LEASE);
    until("a leads", Duration::from_secs(4), || a.leadership.is_leader()).await;
}

#[tokio::test(start_paused = true)]
async fn candidates_add_up_to_half_a_retry_period_of_jitter_and_leaders_none() {
    let api = FakeApi::start().await;
    let on_api_error: OnApiError = Arc::new(|_| {});
    let (elector, _) = Elector::new(
        Api::default_namespaced(api.client_in_memory()),
        contract("a"),
        on_api_error,
    );
    let mut elector = elector.with_jitter(|| 0.9);
    let now = Instant::now();
    assert_eq!(
        elector.next_attempt_at(now),
        now + Duration::from_secs(3),
        "clamped to 50 %"
    );
    let mut elector = elector.with_jitter(|| 0.25);
    assert_eq!(elector.next_attempt_at(now), now + Duration::from_millis(2500));
    api.create_lease(LEASE);
    elector.attempt().await;
    assert!(elector.election.is_leader());
    assert_eq!(elector.next_attempt_at(now), now + Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn a_leadership_handle_wakes_on_each_change_of_the_view() {
    let api = FakeApi::start().await;
    api.create_lease(LEASE);
    let mut a = Replica::spawn(api.client_in_memory(), contract("a"));
    let mut watching = a.leadership.clone();
    tokio::time::timeout(Duration::from_secs(1), watching.changed())
        .await
        .expect("a change");
    assert!(watching.is_leader());
    a.stop().await;
    assert!(!watching.view().role.eq(&Role::Leader));
    // The elector has ended: no more changes, and waiting for one does not spin.
    assert!(tokio::time::timeout(Duration::from_secs(5), async {
        watching.changed().await;
        watching.changed().await;
    })
    .await
    .is_err());

    let (tx, fixed) = Leadership::fixed(a.leadership.view());
    tx.send_modify(|v| v.role = Role::Leader);
    assert!(fixed.is_leader());
}

#[test]
fn roles_are_spelled_as_the_contract_says() {
    let spelled: Vec<_> = [Role::Leader, Role::Follower, Role::Candidate].map(Role::as_str).into();
    assert_eq!(spelled, ["leader", "follower", "candidate"]);
}

// --- real socket, real client, real time ---

#[tokio::test]
async fn over_a_socket_one_of_two_replicas_leads_and_a_graceful_stop_hands_over() {
    let api = FakeApi::start().await;
    api.create_lease(LEASE);
    let mut a = Replica::spawn(socket_client(&api).await, short("a"));
    until("a leads", Duration::from_secs(5), || a.leadership.is_leader()).await;
    let b = Replica::spawn(socket_client(&api).await, short("b"));
    until("b follows", Duration::from_secs(5), || {
        b.leadership.view().role == Role::Follower
    })
    .await;
    assert_eq!(leaders(&[&a, &b]), 1);

    a.stop().await;
    assert_eq!(holder(&api), None, "released");
    // 2 x retry_period, plus slack for two loaded cores.
    until("b leads", Duration::from_millis(600 + 2000), || {
        b.leadership.is_leader()
    })
    .await;
    assert_eq!(holder(&api).as_deref(), Some("b"));
}

#[tokio::test]
async fn over_a_socket_an_aborted_leader_is_replaced_and_two_never_lead() {
    let api = FakeApi::start().await;
    api.create_lease(LEASE);
    let a = Replica::spawn(socket_client(&api).await, short("a"));
    until("a leads", Duration::from_secs(5), || a.leadership.is_leader()).await;
    let b = Replica::spawn(socket_client(&api).await, short("b"));
    let watch_until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < watch_until {
        assert!(leaders(&[&a, &b]) <= 1, "two leaders");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    a.task.abort();
    // lease_duration + 3 x retry_period, plus slack.
    until("b leads", Duration::from_millis(2000 + 900 + 2000), || {
        b.leadership.is_leader()
    })
    .await;
}

#[tokio::test]
async fn over_a_socket_a_leader_whose_api_hangs_steps_down_after_renew_deadline() {
    let api = FakeApi::start().await;
    api.create_lease(LEASE);
    let a = Replica::spawn(socket_client(&api).await, short("a"));
    until("a leads", Duration::from_secs(5), || a.leadership.is_leader()).await;

    api.set_fault(Fault::Hang);
    until("a steps down", Duration::from_millis(1500 + 2000), || {
        !a.leadership.is_leader()
    })
    .await;
    // The bound fires at the deadline: at once on the paused clock; here, slack for two loaded cores.
    until("a tells why", Duration::from_secs(5), || {
        a.leadership.view().lost_for_api_only
    })
    .await;
    let view = a.leadership.view();
    assert!(view.lost_for_api_only && !view.api_reachable, "{view:?}");
}
