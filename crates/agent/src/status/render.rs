//! The status document for a person at a terminal: a few aligned lines,
//! times as ages ("12s ago"), the VMs as a table. Pure text, no I/O.

use std::fmt::Write;

use super::{LinkState, StatusDoc};

/// Renders `doc`; `now_ms` is the reader's clock (Unix ms) for ages.
pub fn text(doc: &StatusDoc, now_ms: i64) -> String {
    let mut o = String::new();
    let l = &doc.link;
    let _ = writeln!(
        o,
        "csagent {} (pid {}, up {})",
        doc.agent_version,
        doc.pid,
        duration(doc.uptime_secs)
    );
    let _ = writeln!(o, "host uuid:       {}", doc.host_uuid);
    let state = match l.state {
        LinkState::Starting => "starting",
        LinkState::Connecting => "connecting",
        LinkState::Connected => "connected",
        LinkState::Retrying => "retrying",
        LinkState::Closed => "closed",
    };
    let _ = writeln!(
        o,
        "link:            {state} since {}",
        ago(l.since_unix_ms, now_ms)
    );
    let _ = writeln!(o, "endpoint:        {}", or_dash(&l.endpoint));
    let _ = writeln!(o, "plane:           {}", or_dash(&l.plane_id));
    if !l.last_error.is_empty() {
        let _ = writeln!(o, "last error:      {}", l.last_error);
    }
    let _ = writeln!(
        o,
        "last heartbeat:  #{} sent {}, acked {}",
        l.heartbeat_seq,
        ago(l.last_heartbeat_sent_unix_ms, now_ms),
        ago(l.last_heartbeat_ack_unix_ms, now_ms)
    );
    let _ = writeln!(
        o,
        "sessions:        {} ({} reconnects)",
        l.sessions, l.reconnects
    );
    let _ = writeln!(
        o,
        "in flight:       {} {}",
        doc.in_flight_commands.len(),
        doc.in_flight_commands.join(" ")
    );
    let _ = writeln!(o, "host health:     {}", doc.host_health.state);
    for r in &doc.host_health.reasons {
        let _ = writeln!(o, "                 - {r}");
    }
    let avail = if doc.hypervisor_available {
        ""
    } else {
        " (hypervisor not answering: last known list)"
    };
    let _ = writeln!(o, "vms:             {}{avail}", doc.vms.len());
    if !doc.vms.is_empty() {
        let _ = writeln!(
            o,
            "  {:<36}  {:<10}  {:>5}  {:>9}  {:<7}  NAME",
            "UUID", "STATE", "VCPUS", "MEM MiB", "MANAGED"
        );
        for v in &doc.vms {
            let managed = if v.managed { "yes" } else { "no" };
            let _ = writeln!(
                o,
                "  {:<36}  {:<10}  {:>5}  {:>9}  {:<7}  {}",
                v.uuid,
                v.state,
                v.vcpus,
                v.memory_kib / 1024,
                managed,
                v.name
            );
        }
    }
    o
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

fn ago(then_ms: i64, now_ms: i64) -> String {
    if then_ms <= 0 {
        return "never".into();
    }
    let secs = u64::try_from(now_ms.saturating_sub(then_ms) / 1000).unwrap_or(0);
    format!("{} ago", duration(secs))
}

fn duration(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m{}s", s / 60, s % 60),
        s if s < 172_800 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        s => format!("{}d{}h", s / 86_400, (s % 86_400) / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{HealthView, LinkView, VmView};

    #[test]
    fn renders_link_heartbeat_and_vms() {
        let doc = StatusDoc {
            agent_version: "0.1.0".into(),
            pid: 42,
            uptime_secs: 3700,
            link: LinkView {
                state: LinkState::Connected,
                endpoint: "mgmt:8250".into(),
                plane_id: "p1".into(),
                since_unix_ms: 10_000,
                heartbeat_seq: 9,
                last_heartbeat_sent_unix_ms: 19_000,
                last_heartbeat_ack_unix_ms: 0,
                ..LinkView::default()
            },
            host_health: HealthView {
                state: "warning".into(),
                reasons: vec!["clock not synchronised".into()],
            },
            hypervisor_available: true,
            vms: vec![VmView {
                uuid: "u1".into(),
                name: "i-2-3-VM".into(),
                state: "running".into(),
                managed: true,
                vcpus: 2,
                memory_kib: 2 << 20,
            }],
            ..StatusDoc::default()
        };
        let t = text(&doc, 20_000);
        assert!(t.contains("up 61m40s"), "{t}");
        assert!(t.contains("connected since 10s ago"), "{t}");
        assert!(t.contains("endpoint:        mgmt:8250"), "{t}");
        assert!(t.contains("#9 sent 1s ago, acked never"), "{t}");
        assert!(t.contains("- clock not synchronised"), "{t}");
        assert!(
            t.contains("running") && t.contains("i-2-3-VM") && t.contains("2048"),
            "{t}"
        );
    }
}
