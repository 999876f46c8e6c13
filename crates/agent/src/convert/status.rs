//! Wire types the status document reads (the monitor hands out health as
//! the proto's HostHealth), turned into the document's own.

use crate::status::HealthView;
use csagent_proto::v1 as pb;

pub fn health(h: &pb::HostHealth) -> HealthView {
    let state = match pb::HealthState::try_from(h.state) {
        Ok(pb::HealthState::Ok) => "ok",
        Ok(pb::HealthState::Warning) => "warning",
        Ok(pb::HealthState::Critical) => "critical",
        _ => "unknown",
    };
    HealthView {
        state: state.to_string(),
        reasons: h.reasons.clone(),
    }
}
