//! Host identity on the plane's side of a live stream: signing renewal
//! requests for the stream's own identity and pushing the CA bundle.
//!
//! Owns only these two messages; the stream, its registration and its
//! identity check stay in server.rs, signing rules in authority.rs.

use std::sync::Arc;

use crate::authority::Authority;
use crate::registry::ToAgent;
use csagent_proto::v1 as pb;

/// Handles an identity message and returns None, or hands any other
/// message back for the registry.
pub fn intercept(
    authority: Option<&Authority>,
    identity: &str,
    tx: &ToAgent,
    msg: pb::AgentMessage,
) -> Option<pb::AgentMessage> {
    let Some(pb::agent_message::Msg::RenewCertificate(req)) = &msg.msg else {
        return Some(msg);
    };
    let answer = match authority {
        Some(a) => renew(a, identity, &req.csr_pem),
        None => refused("this plane does not issue certificates".into()),
    };
    let m = pb::PlaneMessage {
        msg: Some(pb::plane_message::Msg::CertificateIssued(answer)),
    };
    if tx.try_send(Ok(m)).is_err() {
        tracing::warn!(host = %identity, "queue to the agent is full; renewal answer dropped (the agent asks again)");
    }
    None
}

fn renew(a: &Authority, identity: &str, csr_pem: &str) -> pb::CertificateIssued {
    let host = match uuid::Uuid::parse_str(identity) {
        Ok(h) => h,
        Err(_) => return refused(format!("identity {identity:?} is not a host UUID")),
    };
    match a.sign(csr_pem, &host) {
        Ok((cert, not_after)) => {
            tracing::info!(host = %identity, not_after_unix_ms = not_after, "certificate renewed");
            pb::CertificateIssued {
                cert_chain_pem: cert,
                ca_bundle_pem: a.bundle_pem(),
                not_after_unix_ms: not_after,
                refused: String::new(),
            }
        }
        Err(e) => {
            tracing::warn!(host = %identity, error = %e, "certificate renewal refused");
            refused(e.to_string())
        }
    }
}

fn refused(reason: String) -> pb::CertificateIssued {
    pb::CertificateIssued {
        refused: reason,
        ..Default::default()
    }
}

/// The bundle message for one agent.
pub fn bundle_message(a: &Authority, renew_now: bool) -> pb::PlaneMessage {
    pb::PlaneMessage {
        msg: Some(pb::plane_message::Msg::TrustBundle(pb::TrustBundle {
            ca_bundle_pem: a.bundle_pem(),
            renew_now,
        })),
    }
}

/// Sends the current bundle, so an agent that missed a rotation catches up.
pub fn send_bundle(a: &Arc<Authority>, tx: &ToAgent, renew_now: bool) {
    let _ = tx.try_send(Ok(bundle_message(a, renew_now)));
}
