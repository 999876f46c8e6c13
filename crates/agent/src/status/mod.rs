//! What `csagent status` answers: one JSON document with the link, the
//! in-flight commands, the VMs and the host's health, served on a root-only
//! unix socket (server.rs), and its rendering for people (render.rs).
//!
//! Owns collecting that document from the parts that already hold the data
//! (link state, dispatcher, VM snapshot, host monitor) without waiting on
//! libvirt or the network: a hung hypervisor must not hang `csagent status`.
//! It changes nothing it reads.

pub mod render;
pub mod server;
pub mod state;

use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::monitor::HostMonitor;
use crate::vmstate::VmSnapshot;
pub use state::{LinkState, LinkStatus, LinkView};

/// Reads the ids of the running commands; handed in by whoever wires the
/// agent, so status does not depend on dispatch.
pub type InFlight = Arc<dyn Fn() -> Vec<String> + Send + Sync>;

/// The parts of a running agent the operator interfaces read.
#[derive(Clone)]
pub struct Sources {
    pub host_uuid: String,
    pub started: Instant,
    pub link: Arc<LinkStatus>,
    /// The ids of the commands running now (the dispatcher's).
    pub in_flight: InFlight,
    pub vms: watch::Receiver<VmSnapshot>,
    pub host: Arc<HostMonitor>,
}

/// The status document (JSON on the socket, `csagent status --json`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StatusDoc {
    pub agent_version: String,
    pub host_uuid: String,
    pub pid: u32,
    pub uptime_secs: u64,
    pub generated_at_unix_ms: i64,
    pub link: LinkView,
    pub in_flight_commands: Vec<String>,
    /// False while libvirt does not answer; `vms` is then the last known list.
    pub hypervisor_available: bool,
    pub vms: Vec<VmView>,
    pub host_health: HealthView,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct VmView {
    pub uuid: String,
    pub name: String,
    /// running, paused, stopped, crashed, ... (lower case).
    pub state: String,
    /// Whether csagent defined it (others are reported, never touched).
    pub managed: bool,
    pub vcpus: u32,
    pub memory_kib: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HealthView {
    /// ok, warning, critical or unknown.
    pub state: String,
    pub reasons: Vec<String>,
}

impl Sources {
    /// The document as of now; reads only in-memory state.
    pub fn collect(&self) -> StatusDoc {
        let snap = self.vms.borrow().clone();
        let mut in_flight = (self.in_flight)();
        in_flight.sort();
        StatusDoc {
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            host_uuid: self.host_uuid.clone(),
            pid: std::process::id(),
            uptime_secs: self.started.elapsed().as_secs(),
            generated_at_unix_ms: csagent_core::time::unix_ms(),
            link: self.link.view(),
            in_flight_commands: in_flight,
            hypervisor_available: snap.available,
            vms: snap.vms.iter().map(vm_view).collect(),
            host_health: health_view(&self.host.health()),
        }
    }
}

fn health_view(h: &csagent_host::HostHealth) -> HealthView {
    let state = match h.state {
        csagent_host::HealthState::Ok => "ok",
        csagent_host::HealthState::Warning => "warning",
        csagent_host::HealthState::Critical => "critical",
    };
    HealthView {
        state: state.to_string(),
        reasons: h.findings.iter().map(|f| f.message.clone()).collect(),
    }
}

fn vm_view(v: &csagent_libvirt::VmInfo) -> VmView {
    VmView {
        uuid: v.uuid.clone(),
        name: v.name.clone(),
        state: format!("{:?}", v.state).to_lowercase(),
        managed: v.managed,
        vcpus: v.vcpus,
        memory_kib: v.memory_kib,
    }
}
