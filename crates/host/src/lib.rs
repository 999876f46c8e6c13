//! The host: facts for Register, capacity and load for host reports,
//! hardware sensors and health for every heartbeat, admission of new VMs,
//! the clock, the agent's own footprint, and first-fit placement for the
//! reference plane.
//!
//! This crate reads /proc, /sys and /dev through configurable roots and
//! parses libvirt's capabilities XML handed to it; it never calls libvirt,
//! spawns processes or touches proto types (the agent's convert/host.rs does).
//!
//! Wiring (agent): `HostCollector::new(cfg, SysRoots::host())` once; `facts()`
//! plus `libvirt_caps::parse(..)` at Register; `health()` per heartbeat;
//! `report(&allocated, &pools)` per report interval; `record_skew(clock::skew(..)?)`
//! per heartbeat ack; `admission::check(&latest_report, &req, &cfg.health)`
//! before StartVm. Plane: `placement::first_fit(&summaries, &req)`.

pub mod admission;
pub mod capacity;
pub mod clock;
pub mod collector;
pub mod facts;
pub mod health;
pub mod identity;
pub mod libvirt_caps;
pub mod placement;
pub mod selfstat;
pub mod sensors;
pub mod sysfs;

pub use admission::{AdmissionError, HostSummary, Request};
pub use capacity::{Allocated, Capacity, CapacityConfig, PoolUsage};
pub use collector::{HostCollector, HostConfig, HostReport};
pub use csagent_core::units::{self, Bytes, MiB};
pub use facts::HostFacts;
pub use health::{HealthConfig, HealthState, HostHealth};
pub use identity::{host_uuid, HostIdError};
pub use sysfs::SysRoots;
