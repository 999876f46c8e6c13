//! The context a running command carries: its id, cancellation, deadline,
//! where its events go and how its progress is reported.
//!
//! Sits below both dispatch (which builds it) and the capability modules
//! (vm, handlers) that use it, so neither has to import the other. It must
//! not know how progress is encoded: dispatch hands it a reporter.

use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use crate::outbox::Outbox;

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

/// What a running command may use besides its request.
pub struct Ctx {
    pub command_id: String,
    pub cancel: CancellationToken,
    /// When dispatch gives up on the command.
    pub deadline: Instant,
    /// For the Events caused by this command.
    pub outbox: Arc<Outbox>,
    pub progress: ProgressReporter,
}
