//! Every metric the contract names, in one place: lock-free atomic counters updated on the hot path and a
//! Prometheus text renderer. Labels are fixed, small sets: methods, status codes, error codes, refresh results.

// A panic aborts the process (`panic = "abort"`): nothing on the request path may unwrap or expect.
#![deny(clippy::expect_used, clippy::unwrap_used)]

use std::{
    fmt::Write as _,
    sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed},
    time::Duration,
};

use http::Method;

/// Method label values; anything else counts as `OTHER`.
const METHODS: [&str; 4] = ["GET", "POST", "DELETE", "OTHER"];
/// Status codes 100..=599.
const STATUSES: usize = 500;
/// Histogram bucket upper bounds in seconds: fine below a millisecond (the proxy itself), wide above (the upstream).
pub(crate) const BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// `issettled_proxy_request_duration_by_class_seconds{class}` values: statuses 100..=599 by their first digit
/// (anything else counts as `5xx`).
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
/// `issettled_proxy_upstream_errors_total{code}` values.
pub(crate) const UPSTREAM_CODES: [&str; 3] = ["UPSTREAM_UNREACHABLE", "UPSTREAM_PROTOCOL_ERROR", "UPSTREAM_TIMEOUT"];
/// `issettled_proxy_token_refresh_total{result}` values. `success` includes a 200/204 that kept the current
/// token, which the contract counts as refreshed.
pub(crate) const REFRESH_RESULTS: [&str; 6] = [
    "success",
    "file",
    "revoked",
    "transient_error",
    "bad_response",
    "no_token",
];

/// `issettled_proxy_cluster_api_errors_total{op}` values: the Kubernetes API calls cluster mode makes.
pub(crate) const CLUSTER_API_OPS: [&str; 5] = ["lease_get", "lease_update", "secret_get", "secret_update", "watch"];

/// The registry.
#[derive(Debug)]
pub(crate) struct Metrics {
    requests: Vec<AtomicU64>,
    /// One latency histogram per status class; the contract's unlabelled histogram is their sum, at render time
    /// (a request still updates one histogram).
    durations: [Histogram; CLASSES.len()],
    upstream_errors: [AtomicU64; UPSTREAM_CODES.len()],
    refreshes: [AtomicU64; REFRESH_RESULTS.len()],
    state_file_errors: AtomicU64,
    handover_refused: AtomicU64,
    cluster_api_errors: [AtomicU64; CLUSTER_API_OPS.len()],
    in_flight: AtomicI64,
    /// Reads the log writer's count of dropped lines (the writer is global and set up before the metrics).
    log_lines_dropped: fn() -> u64,
}

/// Token gauges, computed by the caller at render time.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TokenGauges {
    pub(crate) ready: bool,
    /// Seconds until the revoke deadline (negative once passed).
    pub(crate) revoke_deadline_seconds: Option<f64>,
    /// Seconds until the token session ends.
    pub(crate) session_remaining_seconds: Option<f64>,
    /// Cluster mode only: whether this replica holds the Lease, and the chain's generation it knows.
    pub(crate) cluster: Option<(bool, u64)>,
}

/// A latency histogram: per-bucket (not cumulative) counts, the count and the sum.
#[derive(Debug, Default)]
struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

/// What a [`Histogram`] held at render time.
#[derive(Debug, Default)]
struct HistogramRead {
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum_micros: u64,
}

impl Histogram {
    fn observe(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_micros
            .fetch_add(u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX), Relaxed);
    }

    fn read(&self) -> HistogramRead {
        HistogramRead {
            buckets: std::array::from_fn(|i| self.buckets[i].load(Relaxed)),
            count: self.count.load(Relaxed),
            sum_micros: self.sum_micros.load(Relaxed),
        }
    }
}

impl HistogramRead {
    fn add(&mut self, other: &HistogramRead) {
        for (sum, n) in self.buckets.iter_mut().zip(other.buckets) {
            *sum += n;
        }
        self.count += other.count;
        self.sum_micros = self.sum_micros.saturating_add(other.sum_micros);
    }
}

/// Decrements the in-flight gauge when dropped.
#[derive(Debug)]
pub(crate) struct InFlightGuard<'a>(&'a Metrics);

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

// === impl Metrics ===

impl Metrics {
    /// All counters at zero.
    pub(crate) fn new() -> Self {
        Self {
            requests: (0..METHODS.len() * STATUSES).map(|_| AtomicU64::new(0)).collect(),
            durations: Default::default(),
            upstream_errors: Default::default(),
            refreshes: Default::default(),
            state_file_errors: AtomicU64::new(0),
            handover_refused: AtomicU64::new(0),
            cluster_api_errors: Default::default(),
            in_flight: AtomicI64::new(0),
            log_lines_dropped: || 0,
        }
    }

    /// Report `issettled_proxy_log_lines_dropped_total` from `count` (`telemetry::dropped_lines`).
    pub(crate) fn with_log_lines_dropped(mut self, count: fn() -> u64) -> Self {
        self.log_lines_dropped = count;
        self
    }

    /// Count a request in flight until the guard drops.
    pub(crate) fn in_flight(&self) -> InFlightGuard<'_> {
        self.in_flight.fetch_add(1, Relaxed);
        InFlightGuard(self)
    }

    /// Count a finished request.
    pub(crate) fn request(&self, method: &Method, status: u16, elapsed: Duration) {
        let m = match *method {
            Method::GET => 0,
            Method::POST => 1,
            Method::DELETE => 2,
            _ => 3,
        };
        if (100..600).contains(&status) {
            self.requests[m * STATUSES + usize::from(status - 100)].fetch_add(1, Relaxed);
        }
        // 100..=599 → 0..=4; below 100 wraps and is clamped, as is 600 and above: `5xx`.
        let class = usize::from(status / 100).wrapping_sub(1).min(CLASSES.len() - 1);
        self.durations[class].observe(elapsed);
    }

    /// Count an upstream fault by its contract code.
    pub(crate) fn upstream_error(&self, code: &str) {
        if let Some(i) = UPSTREAM_CODES.iter().position(|c| *c == code) {
            self.upstream_errors[i].fetch_add(1, Relaxed);
        }
    }

    /// Count a refresh attempt by result.
    pub(crate) fn token_refresh(&self, result: &str) {
        if let Some(i) = REFRESH_RESULTS.iter().position(|r| *r == result) {
            self.refreshes[i].fetch_add(1, Relaxed);
        }
    }

    /// Count a token that could not be written to `token.state_file`.
    pub(crate) fn state_file_error(&self) {
        self.state_file_errors.fetch_add(1, Relaxed);
    }

    /// Count a new administrator token that was refused (malformed, or refused by the upstream).
    pub(crate) fn token_handover_refused(&self) {
        self.handover_refused.fetch_add(1, Relaxed);
    }

    /// Count a failed Kubernetes API call (cluster mode) by operation.
    pub(crate) fn cluster_api_error(&self, op: &str) {
        if let Some(i) = CLUSTER_API_OPS.iter().position(|o| *o == op) {
            self.cluster_api_errors[i].fetch_add(1, Relaxed);
        }
    }

    /// Render the Prometheus text exposition format (version 0.0.4).
    pub(crate) fn render(&self, gauges: &TokenGauges) -> String {
        let mut out = String::with_capacity(4096);
        let w = &mut out;
        header(
            w,
            "requests_total",
            "counter",
            "Requests answered on the proxy port, by method and status.",
        );
        for (m, method) in METHODS.iter().enumerate() {
            for s in 0..STATUSES {
                let n = self.requests[m * STATUSES + s].load(Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        w,
                        "issettled_proxy_requests_total{{method=\"{method}\",status=\"{}\"}} {n}",
                        s + 100
                    );
                }
            }
        }
        header(
            w,
            "request_duration_seconds",
            "histogram",
            "Time from request to response head on the proxy port.",
        );
        // Each class read once: the unlabelled series are the sum of the per-class ones of the same scrape.
        let classes: [HistogramRead; CLASSES.len()] = std::array::from_fn(|i| self.durations[i].read());
        let mut all = HistogramRead::default();
        for class in &classes {
            all.add(class);
        }
        histogram(w, "request_duration_seconds", "", &all);
        header(
            w,
            "request_duration_by_class_seconds",
            "histogram",
            "Time from request to response head on the proxy port, by status class (1xx to 5xx).",
        );
        for (read, name) in classes.iter().zip(CLASSES) {
            if read.count > 0 {
                histogram(
                    w,
                    "request_duration_by_class_seconds",
                    &format!("class=\"{name}\","),
                    read,
                );
            }
        }
        labelled_counter(
            w,
            "upstream_errors_total",
            "Upstream faults answered with a proxy error, by code.",
            "code",
            &UPSTREAM_CODES,
            &self.upstream_errors,
        );
        labelled_counter(
            w,
            "token_refresh_total",
            "Token refresh attempts and file adoptions, by result.",
            "result",
            &REFRESH_RESULTS,
            &self.refreshes,
        );
        header(
            w,
            "token_state_file_errors_total",
            "counter",
            "Tokens that could not be written to token.state_file (a restart would fall back to the token file).",
        );
        let _ = writeln!(
            w,
            "issettled_proxy_token_state_file_errors_total {}",
            self.state_file_errors.load(Relaxed)
        );
        header(
            w,
            "token_handover_refused_total",
            "counter",
            "New administrator tokens (token file or Secret) refused: malformed, or refused by the upstream.",
        );
        let _ = writeln!(
            w,
            "issettled_proxy_token_handover_refused_total {}",
            self.handover_refused.load(Relaxed)
        );
        header(
            w,
            "log_lines_dropped_total",
            "counter",
            "Log lines dropped because stdout did not keep up (logging never blocks the proxy).",
        );
        let _ = writeln!(
            w,
            "issettled_proxy_log_lines_dropped_total {}",
            (self.log_lines_dropped)()
        );
        gauge(
            w,
            "token_ready",
            "1 while a usable token is held and the proxy is not shutting down.",
            Some(f64::from(u8::from(gauges.ready))),
        );
        gauge(
            w,
            "token_revoke_deadline_seconds",
            "Seconds until the upstream revokes the token unless it is refreshed.",
            gauges.revoke_deadline_seconds,
        );
        gauge(
            w,
            "token_session_remaining_seconds",
            "Seconds until the administrator-issued token session ends.",
            gauges.session_remaining_seconds,
        );
        if let Some((leader, generation)) = gauges.cluster {
            gauge(
                w,
                "cluster_leader",
                "1 while this replica holds the Lease and refreshes the shared chain.",
                Some(f64::from(u8::from(leader))),
            );
            gauge(
                w,
                "cluster_state_generation",
                "Generation of the chain's newest link this replica knows.",
                Some(generation as f64),
            );
            labelled_counter(
                w,
                "cluster_api_errors_total",
                "Failed Kubernetes API calls, by operation.",
                "op",
                &CLUSTER_API_OPS,
                &self.cluster_api_errors,
            );
        }
        gauge(
            w,
            "in_flight_requests",
            "Requests being answered on the proxy port.",
            Some(self.in_flight.load(Relaxed) as f64),
        );
        out
    }
}

fn header(w: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(
        w,
        "# HELP issettled_proxy_{name} {help}\n# TYPE issettled_proxy_{name} {kind}"
    );
}

/// A counter family with one label, one sample per label value (zeros included, so alerts see the series).
fn labelled_counter(w: &mut String, name: &str, help: &str, label: &str, values: &[&str], counts: &[AtomicU64]) {
    header(w, name, "counter", help);
    for (value, count) in values.iter().zip(counts) {
        let _ = writeln!(
            w,
            "issettled_proxy_{name}{{{label}=\"{value}\"}} {}",
            count.load(Relaxed)
        );
    }
}

fn gauge(w: &mut String, name: &str, help: &str, value: Option<f64>) {
    header(w, name, "gauge", help);
    if let Some(v) = value {
        let _ = writeln!(w, "issettled_proxy_{name} {v}");
    }
}

/// One histogram's series: cumulative buckets, `+Inf`, sum and count; `labels` (`name="value",` or empty) go
/// before `le`.
fn histogram(w: &mut String, name: &str, labels: &str, read: &HistogramRead) {
    let mut cumulative = 0;
    for (bound, n) in BUCKETS.iter().zip(read.buckets) {
        cumulative += n;
        let _ = writeln!(
            w,
            "issettled_proxy_{name}_bucket{{{labels}le=\"{bound}\"}} {cumulative}"
        );
    }
    // A request observed while this was read may be in its bucket but not yet in the count: `+Inf` and `_count`
    // are never below the last bucket.
    let count = read.count.max(cumulative);
    let _ = writeln!(w, "issettled_proxy_{name}_bucket{{{labels}le=\"+Inf\"}} {count}");
    let sum = read.sum_micros as f64 / 1e6;
    let labels = labels.trim_end_matches(',');
    let braces = if labels.is_empty() {
        String::new()
    } else {
        format!("{{{labels}}}")
    };
    let _ = writeln!(w, "issettled_proxy_{name}_sum{braces} {sum}");
    let _ = writeln!(w, "issettled_proxy_{name}_count{braces} {count}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_renders() {
        let m = Metrics::new();
        m.request(&Method::GET, 200, Duration::from_micros(300));
        m.request(&Method::GET, 200, Duration::from_millis(40));
        m.request(&Method::PUT, 405, Duration::from_micros(10));
        m.upstream_error("UPSTREAM_TIMEOUT");
        m.token_refresh("success");
        m.state_file_error();
        {
            let _g = m.in_flight();
            assert!(m
                .render(&TokenGauges::default())
                .contains("issettled_proxy_in_flight_requests 1"));
        }
        let text = m.render(&TokenGauges {
            ready: true,
            revoke_deadline_seconds: Some(600.0),
            session_remaining_seconds: Some(3600.0),
            cluster: None,
        });
        assert!(text.contains("issettled_proxy_requests_total{method=\"GET\",status=\"200\"} 2"));
        assert!(text.contains("issettled_proxy_requests_total{method=\"OTHER\",status=\"405\"} 1"));
        assert!(text.contains("issettled_proxy_request_duration_seconds_bucket{le=\"0.0005\"} 2"));
        assert!(text.contains("issettled_proxy_request_duration_seconds_bucket{le=\"0.05\"} 3"));
        assert!(text.contains("issettled_proxy_request_duration_seconds_count 3"));
        assert!(text.contains("issettled_proxy_request_duration_seconds_sum 0.04031\n"));
        let by_class = "issettled_proxy_request_duration_by_class_seconds";
        assert!(text.contains(&format!("{by_class}_bucket{{class=\"2xx\",le=\"0.0005\"}} 1\n")));
        assert!(text.contains(&format!("{by_class}_bucket{{class=\"2xx\",le=\"+Inf\"}} 2\n")));
        assert!(text.contains(&format!("{by_class}_count{{class=\"2xx\"}} 2\n")));
        assert!(text.contains(&format!("{by_class}_sum{{class=\"2xx\"}} 0.0403\n")));
        assert!(text.contains(&format!("{by_class}_bucket{{class=\"4xx\",le=\"0.0005\"}} 1\n")));
        assert!(text.contains(&format!("{by_class}_count{{class=\"4xx\"}} 1\n")));
        assert!(!text.contains("class=\"5xx\""), "classes without requests are left out");
        assert!(text.contains("issettled_proxy_upstream_errors_total{code=\"UPSTREAM_TIMEOUT\"} 1"));
        assert!(text.contains("issettled_proxy_token_refresh_total{result=\"success\"} 1"));
        assert!(text.contains("issettled_proxy_token_state_file_errors_total 1"));
        assert!(text.contains("issettled_proxy_token_ready 1"));
        assert!(text.contains("issettled_proxy_token_revoke_deadline_seconds 600"));
        assert!(text.contains("issettled_proxy_in_flight_requests 0"));
        assert!(text.contains("issettled_proxy_log_lines_dropped_total 0"));
    }

    #[test]
    fn dropped_log_lines_are_read_from_the_writer() {
        let m = Metrics::new().with_log_lines_dropped(|| 7);
        assert!(m
            .render(&TokenGauges::default())
            .contains("issettled_proxy_log_lines_dropped_total 7\n"));
    }
}
