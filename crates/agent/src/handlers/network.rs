//! Guest network commands: what each does with the network module.

use super::Reply;
use csagent_core::error::{CommandError, ErrorKind};
use csagent_network::{IfName, Network, NetworkSpec, VmRules, VmUuid};

/// A validated network request.
#[derive(Debug)]
pub enum NetworkOp {
    Ensure(VmUuid, NetworkSpec),
    Release(VmUuid, IfName),
    ApplySecurityGroup(VmRules),
    RemoveSecurityGroup(VmUuid),
    Counters(Vec<IfName>),
}

pub async fn handle(n: Option<&Network>, op: NetworkOp) -> Result<Reply, CommandError> {
    let n = n.ok_or_else(|| {
        CommandError::new(
            ErrorKind::Unavailable,
            "guest networking is unavailable on this agent (netlink could not be opened at start; see the agent log)",
        )
    })?;
    let r = match op {
        NetworkOp::Ensure(vm, spec) => n.ensure_network(vm, &spec).await.map(Reply::Bridge),
        NetworkOp::Release(vm, br) => n.release_network(vm, &br).await.map(Reply::NetworkReleased),
        NetworkOp::ApplySecurityGroup(rules) => n
            .apply_security_group(rules)
            .await
            .map(Reply::SecurityGroupApplied),
        NetworkOp::RemoveSecurityGroup(vm) => n
            .remove_security_group(vm)
            .await
            .map(|()| Reply::SecurityGroupRemoved),
        NetworkOp::Counters(taps) => n.counters(&taps).await.map(Reply::Counters),
    };
    r.map_err(CommandError::from)
}
