//! Prometheus metrics of the agent, rendered in the text exposition format
//! 0.0.4 and served on loopback by http.rs.
//!
//! Owns the one thing no other part keeps: per-command-type counts by
//! outcome and latency histograms, recorded by dispatch with one call. The
//! rest (link, heartbeat age, host health, VMs) is read at scrape time from
//! the status document, so nothing is counted twice or can drift. The
//! registry is a handle the agent makes once and hands to dispatch (which
//! records) and to the endpoint (which renders), so two agents in one
//! process (tests) never mix their counts; recording never blocks a command
//! for longer than a map update.

pub mod http;

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

use crate::status::{LinkState, StatusDoc};
use csagent_core::error::CommandError;

/// Upper bounds (s) of the latency buckets: echo-fast to a slow template copy.
pub const BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0, 600.0,
];

#[derive(Default)]
struct Histogram {
    /// Non-cumulative counts per bucket; the last slot is +Inf.
    counts: [u64; BUCKETS.len() + 1],
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, secs: f64) {
        let i = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        self.counts[i] += 1;
        self.sum += secs;
        self.count += 1;
    }
}

#[derive(Default)]
struct Commands {
    /// (type, outcome) -> count.
    outcomes: BTreeMap<(&'static str, &'static str), u64>,
    latency: BTreeMap<&'static str, Histogram>,
}

/// The agent's command counts and latencies.
#[derive(Default)]
pub struct CommandMetrics {
    commands: Mutex<Commands>,
}

impl CommandMetrics {
    /// Records a finished command: its type ("start_vm"), outcome and time.
    pub fn record<T>(&self, kind: &'static str, outcome: &Result<T, CommandError>, took: Duration) {
        let outcome = match outcome {
            Ok(_) => "ok",
            Err(e) => outcome_label(e.kind),
        };
        let mut c = self.lock();
        *c.outcomes.entry((kind, outcome)).or_default() += 1;
        c.latency
            .entry(kind)
            .or_default()
            .observe(took.as_secs_f64());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Commands> {
        // Updates are single map operations; a poisoned lock is still consistent.
        csagent_core::sync::lock(&self.commands)
    }
}

fn outcome_label(k: csagent_core::error::ErrorKind) -> &'static str {
    use csagent_core::error::ErrorKind as K;
    match k {
        K::InvalidArgument => "invalid_argument",
        K::NotFound => "not_found",
        K::AlreadyExists => "already_exists",
        K::Conflict => "conflict",
        K::DeadlineExceeded => "deadline_exceeded",
        K::Cancelled => "cancelled",
        K::Unimplemented => "unimplemented",
        K::Unavailable => "unavailable",
        K::InsufficientCapacity => "insufficient_capacity",
        K::HostUnhealthy => "host_unhealthy",
        K::ShuttingDown => "shutting_down",
        K::PermissionDenied => "permission_denied",
        K::FailedPrecondition => "failed_precondition",
        K::ResourceExhausted => "resource_exhausted",
        K::Internal => "internal",
    }
}

/// The whole exposition: command metrics plus gauges read from `doc`.
pub fn render(commands: &CommandMetrics, doc: &StatusDoc) -> String {
    let mut o = String::new();
    render_commands(&mut o, commands);
    render_link(&mut o, doc);
    render_host(&mut o, doc);
    render_vms(&mut o, doc);
    o
}

fn header(o: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn render_commands(o: &mut String, commands: &CommandMetrics) {
    let c = commands.lock();
    header(
        o,
        "csagent_commands_total",
        "counter",
        "Commands finished, by type and outcome.",
    );
    for ((kind, outcome), n) in &c.outcomes {
        let _ = writeln!(
            o,
            "csagent_commands_total{{type=\"{kind}\",outcome=\"{outcome}\"}} {n}"
        );
    }
    header(
        o,
        "csagent_command_duration_seconds",
        "histogram",
        "Time from a command's start (queueing on its VM included) to its result.",
    );
    for (kind, h) in &c.latency {
        let mut cumulative = 0;
        for (i, bound) in BUCKETS.iter().enumerate() {
            cumulative += h.counts[i];
            let _ = writeln!(o, "csagent_command_duration_seconds_bucket{{type=\"{kind}\",le=\"{bound}\"}} {cumulative}");
        }
        let _ = writeln!(
            o,
            "csagent_command_duration_seconds_bucket{{type=\"{kind}\",le=\"+Inf\"}} {}",
            h.count
        );
        let _ = writeln!(
            o,
            "csagent_command_duration_seconds_sum{{type=\"{kind}\"}} {}",
            h.sum
        );
        let _ = writeln!(
            o,
            "csagent_command_duration_seconds_count{{type=\"{kind}\"}} {}",
            h.count
        );
    }
}

fn gauge(o: &mut String, name: &str, help: &str, value: impl std::fmt::Display) {
    header(o, name, "gauge", help);
    let _ = writeln!(o, "{name} {value}");
}

fn age_secs(then_ms: i64, now_ms: i64) -> f64 {
    if then_ms <= 0 {
        return -1.0;
    }
    (now_ms.saturating_sub(then_ms)).max(0) as f64 / 1000.0
}

fn render_link(o: &mut String, doc: &StatusDoc) {
    let l = &doc.link;
    let now = doc.generated_at_unix_ms;
    let up = u8::from(l.state == LinkState::Connected);
    gauge(
        o,
        "csagent_link_connected",
        "1 while registered with a management plane.",
        up,
    );
    header(
        o,
        "csagent_link_sessions_total",
        "counter",
        "Sessions established since start.",
    );
    let _ = writeln!(o, "csagent_link_sessions_total {}", l.sessions);
    header(
        o,
        "csagent_link_reconnects_total",
        "counter",
        "Sessions established after the first.",
    );
    let _ = writeln!(o, "csagent_link_reconnects_total {}", l.reconnects);
    gauge(
        o,
        "csagent_heartbeat_age_seconds",
        "Seconds since the last heartbeat was sent; -1: none yet.",
        age_secs(l.last_heartbeat_sent_unix_ms, now),
    );
    gauge(
        o,
        "csagent_heartbeat_ack_age_seconds",
        "Seconds since the plane last acknowledged a heartbeat; -1: never.",
        age_secs(l.last_heartbeat_ack_unix_ms, now),
    );
    gauge(
        o,
        "csagent_commands_in_flight",
        "Commands running now.",
        doc.in_flight_commands.len(),
    );
}

fn render_host(o: &mut String, doc: &StatusDoc) {
    let state = match doc.host_health.state.as_str() {
        "ok" => 0,
        "warning" => 1,
        "critical" => 2,
        _ => -1,
    };
    gauge(
        o,
        "csagent_host_health",
        "Host health: 0 ok, 1 warning, 2 critical, -1 unknown.",
        state,
    );
    gauge(
        o,
        "csagent_host_health_reasons",
        "Reasons the host is not ok.",
        doc.host_health.reasons.len(),
    );
    gauge(
        o,
        "csagent_hypervisor_available",
        "1 while libvirt answers.",
        u8::from(doc.hypervisor_available),
    );
    gauge(
        o,
        "csagent_uptime_seconds",
        "Seconds since the agent started.",
        doc.uptime_secs,
    );
    header(o, "csagent_build_info", "gauge", "The agent's version.");
    let _ = writeln!(
        o,
        "csagent_build_info{{version=\"{}\"}} 1",
        escape(&doc.agent_version)
    );
}

fn render_vms(o: &mut String, doc: &StatusDoc) {
    let mut by_state: BTreeMap<&str, usize> = BTreeMap::new();
    for v in &doc.vms {
        *by_state.entry(v.state.as_str()).or_default() += 1;
    }
    header(
        o,
        "csagent_vms",
        "gauge",
        "Domains on this host by power state.",
    );
    for (state, n) in &by_state {
        let _ = writeln!(o, "csagent_vms{{state=\"{}\"}} {n}", escape(state));
    }
    header(
        o,
        "csagent_vm_info",
        "gauge",
        "One series per domain: its power state and whether csagent manages it.",
    );
    for v in &doc.vms {
        let _ = writeln!(
            o,
            "csagent_vm_info{{uuid=\"{}\",name=\"{}\",state=\"{}\",managed=\"{}\"}} 1",
            escape(&v.uuid),
            escape(&v.name),
            escape(&v.state),
            v.managed
        );
    }
    header(o, "csagent_vm_vcpus", "gauge", "vCPUs of each domain.");
    for v in &doc.vms {
        let _ = writeln!(
            o,
            "csagent_vm_vcpus{{uuid=\"{}\"}} {}",
            escape(&v.uuid),
            v.vcpus
        );
    }
    header(
        o,
        "csagent_vm_memory_bytes",
        "gauge",
        "Memory of each domain.",
    );
    for v in &doc.vms {
        let _ = writeln!(
            o,
            "csagent_vm_memory_bytes{{uuid=\"{}\"}} {}",
            escape(&v.uuid),
            v.memory_kib * 1024
        );
    }
}

/// Label values: backslash, quote and newline escaped, per the format.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::VmView;
    use csagent_core::error::ErrorKind;

    #[test]
    fn histogram_buckets_are_cumulative_and_labels_escaped() {
        let m = CommandMetrics::default();
        m.record::<()>("unit_test_kind", &Ok(()), Duration::from_millis(3));
        m.record::<()>(
            "unit_test_kind",
            &Err(CommandError::new(ErrorKind::NotFound, "x")),
            Duration::from_secs(7),
        );
        let mut doc = StatusDoc::default();
        doc.vms.push(VmView {
            uuid: "u".into(),
            name: "a\"b\\c".into(),
            state: "running".into(),
            ..VmView::default()
        });
        let t = render(&m, &doc);
        assert!(
            t.contains("csagent_commands_total{type=\"unit_test_kind\",outcome=\"ok\"} 1"),
            "{t}"
        );
        assert!(t.contains("outcome=\"not_found\"} 1"), "{t}");
        assert!(
            t.contains("bucket{type=\"unit_test_kind\",le=\"0.005\"} 1"),
            "{t}"
        );
        assert!(
            t.contains("bucket{type=\"unit_test_kind\",le=\"5\"} 1"),
            "{t}"
        );
        assert!(
            t.contains("bucket{type=\"unit_test_kind\",le=\"10\"} 2"),
            "{t}"
        );
        assert!(
            t.contains("bucket{type=\"unit_test_kind\",le=\"+Inf\"} 2"),
            "{t}"
        );
        assert!(t.contains("name=\"a\\\"b\\\\c\""), "{t}");
        assert!(t.contains("csagent_heartbeat_age_seconds -1"), "{t}");
        assert!(t.contains("csagent_vms{state=\"running\"} 1"), "{t}");
    }
}
