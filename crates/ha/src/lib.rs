//! High availability's evidence on storage: each host's heartbeat records
//! on the shared pools, and a neighbour's verdict on a host that went
//! silent.
//!
//! Owns the record format, this host's write loop and the check a neighbour
//! runs. It knows nothing of the wire, of libvirt or of the plane, and it
//! never acts on a verdict: fencing and restarting are the plane's.

pub mod beat;
pub mod check;
pub mod record;

pub use beat::{Beat, BeatConfig, PoolBeat};
pub use check::{check, Evidence, Finding, Question, Sign, Verdict};
pub use record::Record;
