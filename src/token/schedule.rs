//! When to refresh, and how long to wait after a failure: pure functions of durations, unit-tested directly.
//!
//! next refresh = the earlier of `refresh_interval` after the last confirmation and `refresh_before_expiry`
//! before the token's `exp`; a failed refresh is retried with exponential backoff and full jitter, never later
//! than half the time left before the revoke deadline.

use std::time::Duration;

/// First retry delay after a failure (before jitter).
pub(crate) const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Largest retry delay (before jitter).
pub(crate) const BACKOFF_CAP: Duration = Duration::from_secs(60);
/// Smallest retry delay, so full jitter never spins.
pub(crate) const BACKOFF_FLOOR: Duration = Duration::from_millis(250);
/// The shortest time from a confirmation to a refresh that the token's expiry brings forward.
pub(crate) const EXPIRY_STEP_FLOOR: Duration = Duration::from_secs(1);
/// The refresher looks at the wall clock and the token file at least this often.
pub(crate) const POLL: Duration = Duration::from_millis(500);
/// Session warnings are logged when this much of the session remains.
pub(crate) const SESSION_WARNINGS: [Duration; 3] = [
    Duration::from_secs(2 * 3600),
    Duration::from_secs(3600),
    Duration::from_secs(15 * 60),
];

/// How long until the next scheduled refresh, given the time since the token was last confirmed and its
/// lifetime at that moment (`exp` minus the confirmation time, if known). The lead before `exp` is
/// `before_expiry`; a token that does not even live that long is refreshed half-way through its life instead
/// (else every fresh token would be due at once: a refresh storm). A refresh the expiry brings forward never
/// comes sooner than [`EXPIRY_STEP_FLOOR`] after the confirmation: an upstream that confirms a token without
/// extending it would otherwise be asked again after half the time left, then half of that, and so on. A token
/// already expired when it was confirmed has no lifetime to divide: the interval applies.
pub(crate) fn refresh_due_in(
    since_confirmed: Duration,
    interval: Duration,
    lifetime: Option<Duration>,
    before_expiry: Duration,
) -> Duration {
    let by_interval = interval.saturating_sub(since_confirmed);
    match lifetime.filter(|life| !life.is_zero()) {
        Some(life) => {
            let lead = if before_expiry < life { before_expiry } else { life / 2 };
            let by_expiry = life
                .saturating_sub(lead)
                .max(EXPIRY_STEP_FLOOR)
                .saturating_sub(since_confirmed);
            by_interval.min(by_expiry)
        }
        None => by_interval,
    }
}

/// Delay before retry number `failures` (1 for the first retry). `jitter` in `[0, 1]` scales the exponential
/// step (full jitter); the result is at least [`BACKOFF_FLOOR`]. Before the revoke deadline it is at most half
/// of the time left (`until_deadline`), so a few more attempts fit before the upstream revokes the token. Once
/// the deadline has passed there is nothing left to race: the plain back-off applies, up to [`BACKOFF_CAP`],
/// so a long outage is not met with a retry every [`BACKOFF_FLOOR`] from every sidecar.
pub(crate) fn retry_delay(failures: u32, jitter: f64, until_deadline: Duration) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    let step = BACKOFF_BASE.saturating_mul(1 << exp).min(BACKOFF_CAP);
    let jittered = step.mul_f64(jitter.clamp(0.0, 1.0)).max(BACKOFF_FLOOR);
    if until_deadline.is_zero() {
        return jittered;
    }
    jittered.min((until_deadline / 2).max(BACKOFF_FLOOR))
}

/// Which session warning (index into [`SESSION_WARNINGS`]) is due, given how much of the session remains and
/// how many warnings were already logged.
pub(crate) fn session_warning_due(remaining: Duration, already: usize) -> Option<usize> {
    let due = SESSION_WARNINGS.iter().filter(|w| remaining <= **w).count();
    (due > already).then(|| due - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn interval_rules_without_expiry() {
        assert_eq!(refresh_due_in(S(0), S(600), None, S(120)), S(600));
        assert_eq!(refresh_due_in(S(599), S(600), None, S(120)), S(1));
        assert_eq!(refresh_due_in(S(9999), S(600), None, S(120)), S(0));
    }

    #[test]
    fn near_expiry_wins() {
        assert_eq!(refresh_due_in(S(0), S(600), Some(S(300)), S(120)), S(180));
        assert_eq!(refresh_due_in(S(100), S(600), Some(S(300)), S(120)), S(80));
        assert_eq!(refresh_due_in(S(0), S(60), Some(S(3600)), S(120)), S(60));
        assert_eq!(refresh_due_in(S(200), S(600), Some(S(300)), S(120)), S(0));
    }

    #[test]
    fn a_lifetime_shorter_than_the_lead_refreshes_half_way_not_at_once() {
        // 60 s tokens with a 2 min lead: every 30 s, not in a loop.
        assert_eq!(refresh_due_in(S(0), S(600), Some(S(60)), S(120)), S(30));
        assert_eq!(refresh_due_in(S(29), S(600), Some(S(60)), S(120)), S(1));
        assert_eq!(refresh_due_in(S(0), S(600), Some(S(60)), S(55)), S(5));
    }

    #[test]
    fn expiry_never_brings_a_refresh_closer_than_the_floor() {
        // With 1.6 s left, half-way would be 0.8 s; then 0.4 s, 0.2 s ... if the upstream keeps confirming
        // without extending it. The floor keeps it at 1 s.
        let ms = Duration::from_millis;
        assert_eq!(refresh_due_in(S(0), S(600), Some(ms(1600)), S(120)), EXPIRY_STEP_FLOOR);
        assert_eq!(refresh_due_in(ms(300), S(600), Some(ms(1600)), S(120)), ms(700));
        // The interval still wins when it is shorter.
        assert_eq!(refresh_due_in(S(0), ms(500), Some(ms(1600)), S(120)), ms(500));
        // Longer lifetimes are unaffected.
        assert_eq!(refresh_due_in(S(0), S(600), Some(S(4)), S(120)), S(2));
    }

    #[test]
    fn a_token_expired_when_confirmed_waits_for_the_interval_not_a_loop() {
        assert_eq!(refresh_due_in(S(0), S(600), Some(S(0)), S(120)), S(600));
        assert_eq!(refresh_due_in(S(30), S(600), Some(S(0)), S(120)), S(570));
    }

    #[test]
    fn backoff_grows_is_capped_and_respects_the_deadline() {
        let far = S(3600);
        let delays: Vec<_> = (1..=8).map(|n| retry_delay(n, 1.0, far)).collect();
        assert_eq!(delays[..4], [S(1), S(2), S(4), S(8)]);
        assert_eq!(delays[7], S(60));
        assert_eq!(retry_delay(1, 0.0, far), BACKOFF_FLOOR);
        assert_eq!(retry_delay(10, 1.0, S(30)), S(15));
        assert_eq!(retry_delay(10, 1.0, S(1)), Duration::from_millis(500));
        assert_eq!(retry_delay(10, 1.0, Duration::from_millis(100)), BACKOFF_FLOOR);
        assert!(retry_delay(3, 0.5, far) <= S(4));
    }

    #[test]
    fn past_the_deadline_the_plain_backoff_applies() {
        assert_eq!(retry_delay(1, 1.0, S(0)), S(1));
        assert_eq!(retry_delay(5, 1.0, S(0)), S(16));
        assert_eq!(retry_delay(20, 1.0, S(0)), BACKOFF_CAP);
        assert_eq!(retry_delay(20, 0.5, S(0)), S(30), "jittered");
        assert_eq!(retry_delay(20, 0.0, S(0)), BACKOFF_FLOOR);
    }

    #[test]
    fn session_warnings_fire_once_each() {
        assert_eq!(session_warning_due(S(3 * 3600), 0), None);
        assert_eq!(session_warning_due(S(2 * 3600), 0), Some(0));
        assert_eq!(session_warning_due(S(2 * 3600), 1), None);
        assert_eq!(session_warning_due(S(30 * 60), 1), Some(1));
        assert_eq!(session_warning_due(S(60), 0), Some(2));
        assert_eq!(session_warning_due(S(60), 3), None);
    }
}
