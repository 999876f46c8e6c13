//! The context a running command carries: its id, cancellation, deadline,
//! where its events go and how its progress is reported.
//!
//! Sits below both dispatch (which builds it) and the capability modules
//! (vm, handlers) that use it, so neither has to import the other. It must
//! not know how progress or events are encoded: dispatch hands it reporters.

use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use crate::outbox::Outbox;
pub use crate::outbox::VmTransition;

/// How far a long step is.
#[derive(Clone, Debug)]
pub enum Progress {
    /// A copy or conversion: bytes done of total.
    Copy(csagent_storage::Progress),
    /// A live migration's job figures.
    Migration(csagent_libvirt::migrate::JobProgress),
}

/// Reports the progress of a long step (a stage name and how far it is),
/// as dispatch decides: on the stream as CommandProgress.
pub type ProgressReporter = Arc<dyn Fn(&'static str, Progress) + Send + Sync>;

/// One VM transition a command reports, with libvirt's names for the VM.
#[derive(Clone, Debug)]
pub struct VmEvent {
    pub uuid: String,
    pub name: String,
    pub state: VmTransition,
    pub reason: String,
}

/// Reports a command's own VM events, as dispatch decides: on the stream
/// as Event messages carrying the command's id.
pub type EventReporter = Arc<dyn Fn(VmEvent) + Send + Sync>;

/// What a running command may use besides its request.
pub struct Ctx {
    pub command_id: String,
    pub cancel: CancellationToken,
    /// When dispatch gives up on the command.
    pub deadline: Instant,
    /// For the Events caused by this command.
    pub outbox: Arc<Outbox>,
    pub progress: ProgressReporter,
    pub events: EventReporter,
}
