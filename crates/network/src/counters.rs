//! Traffic counters for usage records: per VM NIC (its tap) and per guest
//! network (its uplink: the VLAN sub-interface or VXLAN device), read from
//! the kernel's link statistics in one netlink dump.
//!
//! Directions are the guest's: `in` is what the VM (or the network) received,
//! `out` what it sent. Counters are the kernel's running totals since the
//! link was created; turning them into deltas is the caller's job.

use serde::Serialize;

use super::bridge::ALIAS_PREFIX;
use super::error::Result;
use super::names::IfName;
use super::netlink::{Link, LinkStats, Netlink};

/// Byte and packet totals in both directions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Traffic {
    pub bytes_in: u64,
    pub packets_in: u64,
    pub bytes_out: u64,
    pub packets_out: u64,
}

impl Traffic {
    /// A tap's host side receives what the guest sends, so rx is the VM's out.
    pub fn of_tap(s: LinkStats) -> Self {
        Self {
            bytes_in: s.tx_bytes,
            packets_in: s.tx_packets,
            bytes_out: s.rx_bytes,
            packets_out: s.rx_packets,
        }
    }
    /// An uplink receives from the network what comes into this host.
    pub fn of_uplink(s: LinkStats) -> Self {
        Self {
            bytes_in: s.rx_bytes,
            packets_in: s.rx_packets,
            bytes_out: s.tx_bytes,
            packets_out: s.tx_packets,
        }
    }
}

/// Counters of the requested taps and of every csagent network.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TrafficReport {
    /// (tap, traffic) for each requested tap that exists.
    pub taps: Vec<(String, Traffic)>,
    /// (bridge, traffic of its uplink) for each csagent bridge.
    pub networks: Vec<(String, Traffic)>,
}

/// Reads counters for `taps` and every csagent network in one dump.
pub async fn read(nl: &Netlink, taps: &[IfName]) -> Result<TrafficReport> {
    let links = nl.links().await?;
    Ok(report(&links, taps))
}

fn report(links: &[Link], taps: &[IfName]) -> TrafficReport {
    let tap_stats = taps
        .iter()
        .filter_map(|t| links.iter().find(|l| l.name == t.as_str()))
        .map(|l| (l.name.clone(), Traffic::of_tap(l.stats)))
        .collect();
    let ours = |l: &&Link| {
        l.alias
            .as_deref()
            .is_some_and(|a| a.starts_with(ALIAS_PREFIX))
    };
    let networks = links
        .iter()
        .filter(ours)
        .filter(|l| l.kind.as_deref() == Some("bridge"))
        .filter_map(|br| {
            links
                .iter()
                .filter(ours)
                .find(|u| u.master == Some(br.index) && u.alias == br.alias)
                .map(|u| (br.name.clone(), Traffic::of_uplink(u.stats)))
        })
        .collect();
    TrafficReport {
        taps: tap_stats,
        networks,
    }
}
