//! The election's decisions, on injected instants (nothing here waits).

use super::*;

const LEASE: Duration = Duration::from_secs(15);
const RENEW: Duration = Duration::from_secs(10);

fn election(identity: &str) -> Election {
    Election::new(identity.to_owned(), LEASE, RENEW)
}

fn record(holder: &str, resource_version: &str, transitions: i32) -> LeaseRecord {
    LeaseRecord {
        holder: holder.to_owned(),
        lease_duration_seconds: 15,
        acquire_time: Some(wall(0)),
        renew_time: Some(wall(0)),
        transitions,
        resource_version: resource_version.to_owned(),
    }
}

fn wall(secs: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + secs).expect("a valid time")
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// What the API stores for a write: the record with the next resourceVersion.
fn stored(mut written: LeaseRecord) -> LeaseRecord {
    let next = written
        .resource_version
        .parse::<u64>()
        .expect("numeric resourceVersion")
        + 1;
    written.resource_version = next.to_string();
    written
}

fn write(action: Action) -> LeaseRecord {
    match action {
        Action::Write(record) => record,
        Action::Wait => panic!("expected a write, got a wait"),
    }
}

/// `e` reads `seen` at `now`, writes what it decides, and the API accepts it.
fn acquire(e: &mut Election, seen: LeaseRecord, now: Instant) -> LeaseRecord {
    e.observe(seen, now);
    let stored = stored(write(e.decide(now, wall(1))));
    e.wrote(stored.clone(), now);
    stored
}

#[test]
fn a_free_lease_is_acquired_with_the_resource_version_read_and_one_more_transition() {
    let t0 = Instant::now();
    let mut a = election("a");
    assert_eq!(a.observe(record("", "7", 2), t0), None);
    let written = write(a.decide(t0, wall(5)));
    assert_eq!(
        written,
        LeaseRecord {
            holder: "a".to_owned(),
            lease_duration_seconds: 15,
            acquire_time: Some(wall(5)),
            renew_time: Some(wall(5)),
            transitions: 3,
            resource_version: "7".to_owned(),
        }
    );
    assert!(a.wrote(stored(written), t0));
    assert_eq!(a.role(t0), Role::Leader);
}

#[test]
fn a_leader_renews_with_its_last_resource_version_keeping_acquire_time_and_transitions() {
    let t0 = Instant::now();
    let mut a = election("a");
    let held = acquire(&mut a, record("", "7", 2), t0);
    let renewal = write(a.decide(t0 + secs(2.0), wall(9)));
    assert_eq!(renewal.resource_version, held.resource_version);
    assert_eq!(
        (renewal.acquire_time, renewal.renew_time),
        (held.acquire_time, Some(wall(9)))
    );
    assert_eq!(renewal.transitions, 3);
    assert!(
        !a.wrote(stored(renewal), t0 + secs(2.0)),
        "already leader: no new leadership"
    );
    assert_eq!(
        a.check_deadline(t0 + secs(11.9)),
        None,
        "the deadline counts from the last renewal"
    );
}

#[test]
fn a_fresh_lease_held_by_another_is_not_taken() {
    let t0 = Instant::now();
    let mut b = election("b");
    b.observe(record("a", "7", 1), t0);
    assert_eq!(b.decide(t0, wall(0)), Action::Wait);
    assert_eq!(b.decide(t0 + secs(14.9), wall(0)), Action::Wait);
    assert_eq!(b.role(t0 + secs(14.9)), Role::Follower);
}

#[test]
fn expiry_counts_from_when_the_record_was_last_seen_to_change() {
    let t0 = Instant::now();
    let mut b = election("b");
    b.observe(record("a", "7", 1), t0);
    // The same record read again does not restart the count.
    b.observe(record("a", "7", 1), t0 + secs(10.0));
    assert_eq!(write(b.decide(t0 + secs(15.0), wall(0))).transitions, 2);

    let mut c = election("c");
    c.observe(record("a", "7", 1), t0);
    // A renewal seen at t0 + 10 s restarts it.
    let mut renewed = record("a", "8", 1);
    renewed.renew_time = Some(wall(10));
    c.observe(renewed, t0 + secs(10.0));
    assert_eq!(c.decide(t0 + secs(24.9), wall(0)), Action::Wait);
    assert_eq!(c.role(t0 + secs(25.0)), Role::Candidate);
    assert_eq!(write(c.decide(t0 + secs(25.0), wall(0))).resource_version, "8");
}

#[test]
fn another_pods_renew_time_is_ignored_however_skewed() {
    let t0 = Instant::now();
    for skew in [-86_400 * 365, 86_400 * 365] {
        let mut b = election("b");
        let mut skewed = record("a", "7", 1);
        skewed.renew_time = Some(wall(skew));
        b.observe(skewed, t0);
        assert_eq!(
            b.decide(t0 + secs(14.0), wall(0)),
            Action::Wait,
            "skew {skew} s: still held"
        );
        assert!(
            matches!(b.decide(t0 + secs(15.0), wall(0)), Action::Write(_)),
            "skew {skew} s: expired"
        );
    }
}

#[test]
fn a_conflict_leaves_the_leader_leading_until_a_read_shows_another_holder() {
    let t0 = Instant::now();
    let mut a = election("a");
    acquire(&mut a, record("", "7", 0), t0);
    a.failed(false);
    assert!(a.is_leader());
    assert!(a.api_reachable(), "a 409 is an answer");
    assert_eq!(a.observe(record("b", "12", 2), t0 + secs(1.0)), Some(Loss::TakenOver));
    assert_eq!(a.role(t0 + secs(1.0)), Role::Follower);
    assert!(!a.lost_for_api_only());
    assert_eq!(a.decide(t0 + secs(1.0), wall(1)), Action::Wait);
}

#[test]
fn a_leader_that_cannot_reach_the_api_steps_down_at_the_renew_deadline() {
    let t0 = Instant::now();
    let mut a = election("a");
    acquire(&mut a, record("", "7", 0), t0);
    assert_eq!(a.step_down_at(), Some(t0 + RENEW));
    a.failed(true);
    assert_eq!(a.check_deadline(t0 + secs(9.9)), None);
    assert!(a.is_leader());
    assert_eq!(a.check_deadline(t0 + RENEW), Some(Loss::Deadline { api_only: true }));
    assert!(!a.is_leader());
    assert!(a.lost_for_api_only());
    assert!(!a.api_reachable());
    assert_eq!(a.role(t0 + RENEW), Role::Candidate);
    assert_eq!(a.check_deadline(t0 + secs(20.0)), None, "steps down once");

    // The API answers again and shows another holder: no longer lost for the API alone.
    a.observe(record("b", "9", 2), t0 + secs(20.0));
    assert!(!a.lost_for_api_only());
    assert!(a.api_reachable());
}

#[test]
fn a_leader_refused_by_the_api_steps_down_not_for_the_api_alone() {
    let t0 = Instant::now();
    let mut a = election("a");
    acquire(&mut a, record("", "7", 0), t0);
    a.failed(true);
    // The last answer was a refusal (say 403): the API is there.
    a.failed(false);
    assert_eq!(a.check_deadline(t0 + RENEW), Some(Loss::Deadline { api_only: false }));
    assert!(!a.lost_for_api_only());
}

#[test]
fn release_clears_the_holder_with_a_one_second_lease_and_another_takes_it_at_once() {
    let t0 = Instant::now();
    let mut a = election("a");
    let held = acquire(&mut a, record("", "7", 4), t0);
    let released = a.release(wall(3)).expect("ours to release");
    assert_eq!(
        released,
        LeaseRecord {
            holder: String::new(),
            lease_duration_seconds: 1,
            acquire_time: Some(wall(3)),
            renew_time: Some(wall(3)),
            transitions: 5,
            resource_version: held.resource_version,
        }
    );
    assert!(!a.is_leader());

    let mut b = election("b");
    b.observe(stored(released), t0 + secs(0.1));
    let taken = write(b.decide(t0 + secs(0.1), wall(3)));
    assert_eq!((taken.holder.as_str(), taken.transitions), ("b", 6));
}

#[test]
fn nothing_to_release_when_the_lease_names_another() {
    let t0 = Instant::now();
    let mut b = election("b");
    b.observe(record("a", "7", 1), t0);
    assert_eq!(b.release(wall(0)), None);
}

#[test]
fn transitions_count_each_change_of_holder_and_no_renewal() {
    let t0 = Instant::now();
    let (mut a, mut b) = (election("a"), election("b"));
    let r1 = acquire(&mut a, record("", "1", 0), t0);
    assert_eq!(r1.transitions, 1);
    let r2 = stored(write(a.decide(t0 + secs(2.0), wall(2))));
    a.wrote(r2.clone(), t0 + secs(2.0));
    assert_eq!(r2.transitions, 1);
    // a stops answering; b saw r2 at t0 + 2 s and takes over once it has expired.
    b.observe(r2.clone(), t0 + secs(2.0));
    let r3 = acquire(&mut b, r2, t0 + secs(17.0));
    assert_eq!(r3.transitions, 2);
    // a was only paused: it wakes past its deadline, steps down, then reads b's lease and follows.
    assert_eq!(
        a.check_deadline(t0 + secs(18.0)),
        Some(Loss::Deadline { api_only: false })
    );
    assert_eq!(a.observe(r3, t0 + secs(18.0)), None);
    assert_eq!(a.role(t0 + secs(18.0)), Role::Follower);
}

#[test]
fn a_restarted_replica_finding_its_own_name_renews_without_a_transition() {
    let t0 = Instant::now();
    let mut a = election("a");
    a.observe(record("a", "7", 3), t0);
    let written = write(a.decide(t0, wall(1)));
    assert_eq!((written.transitions, written.acquire_time), (3, Some(wall(0))));
}

#[test]
fn a_record_that_was_never_read_is_never_written() {
    let a = election("a");
    assert_eq!(a.decide(Instant::now(), wall(0)), Action::Wait);
    assert_eq!(a.role(Instant::now()), Role::Candidate);
}

#[test]
fn the_written_duration_is_rounded_up_to_whole_seconds() {
    assert_eq!(whole_seconds(secs(1.5)), 2);
    assert_eq!(whole_seconds(secs(15.0)), 15);
}
