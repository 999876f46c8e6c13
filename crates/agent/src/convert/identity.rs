//! Proto messages of host identity to and from this module's own types.

use crate::identity::credentials::IssuedCert;
use csagent_proto::v1 as pb;

pub fn issued(m: pb::CertificateIssued) -> IssuedCert {
    IssuedCert {
        chain_pem: m.cert_chain_pem,
        ca_bundle_pem: m.ca_bundle_pem,
        refused: m.refused,
    }
}

pub fn renew_request(csr_pem: String) -> pb::AgentMessage {
    pb::AgentMessage {
        msg: Some(pb::agent_message::Msg::RenewCertificate(
            pb::RenewCertificate { csr_pem },
        )),
    }
}
