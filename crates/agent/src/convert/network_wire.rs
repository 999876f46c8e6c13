//! Network commands at the edge: wire body -> validated `NetworkOp` and the
//! VM it serialises on; replies -> wire results.

use crate::convert::network as convert;
use crate::handlers::network::NetworkOp;
use crate::handlers::Reply;
use csagent_core::error::CommandError;
use csagent_proto::v1 as pb;

type Decoded = Result<(NetworkOp, Option<String>), CommandError>;

/// Decodes a network body; `None` if the body is not a network command.
pub fn decode(body: &pb::command::Body) -> Option<Decoded> {
    use pb::command::Body as B;
    let vm_key = |vm: &csagent_network::VmUuid| Some(vm.0.to_string());
    let r = match body {
        B::EnsureNetwork(m) => convert::ensure_network(m).map(|(vm, spec)| {
            let key = vm_key(&vm);
            (NetworkOp::Ensure(vm, spec), key)
        }),
        B::ReleaseNetwork(m) => convert::release_network(m).map(|(vm, br)| {
            let key = vm_key(&vm);
            (NetworkOp::Release(vm, br), key)
        }),
        B::ApplySecurityGroup(m) => convert::apply_security_group(m).map(|rules| {
            let key = vm_key(&rules.vm);
            (NetworkOp::ApplySecurityGroup(rules), key)
        }),
        B::RemoveSecurityGroup(m) => convert::vm_uuid(&m.vm_uuid).map(|vm| {
            let key = vm_key(&vm);
            (NetworkOp::RemoveSecurityGroup(vm), key)
        }),
        B::GetNetworkCounters(m) => {
            convert::counters_request(m).map(|t| (NetworkOp::Counters(t), None))
        }
        _ => return None,
    };
    Some(r.map_err(CommandError::from))
}

/// Encodes a network reply; gives the reply back if it is not one.
pub fn encode(reply: Reply) -> Result<pb::command_result::Result, Box<Reply>> {
    use pb::command_result::Result as R;
    Ok(match reply {
        Reply::Bridge(b) => R::EnsureNetwork(convert::ensure_network_result(&b)),
        Reply::NetworkReleased(removed) => R::ReleaseNetwork(pb::ReleaseNetworkResult {
            bridge_removed: removed,
        }),
        Reply::SecurityGroupApplied(changed) => {
            R::ApplySecurityGroup(pb::ApplySecurityGroupResult { changed })
        }
        Reply::SecurityGroupRemoved => R::RemoveSecurityGroup(pb::RemoveSecurityGroupResult {}),
        Reply::Counters(c) => R::NetworkCounters(convert::counters_result(&c)),
        other => return Err(Box::new(other)),
    })
}
