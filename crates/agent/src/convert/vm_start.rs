//! The StartVm wire message <-> the vm module's own types.
//!
//! Owns the edge of StartVm: the spec, the volumes and networks to prepare
//! (decoded with the storage and network modules' own converters, so a field
//! means the same in StartVm as in CreateVolumeFromTemplate or
//! EnsureNetwork), and the result. Must not perform any operation.

use csagent_core::error::CommandError;
use csagent_domain::MacAddr;
use csagent_proto::v1 as pb;

use crate::vm::prepare::{NetworkPrep, Prepared, StartRequest, VolumePrep};

/// Decodes and validates a StartVm; nothing has happened yet.
pub fn start_request(m: &pb::StartVm) -> Result<StartRequest, CommandError> {
    let spec = m
        .spec
        .as_ref()
        .ok_or_else(|| CommandError::invalid("start_vm.spec is missing"))?;
    let spec = crate::convert::domain::spec_from_proto(spec)
        .map_err(|e| CommandError::invalid(e.to_string()))?;
    let volumes = m
        .volumes
        .iter()
        .enumerate()
        .map(|(i, v)| volume(i, v))
        .collect::<Result<_, _>>()?;
    let networks = m
        .networks
        .iter()
        .enumerate()
        .map(|(i, n)| network(i, &spec.uuid.0, n))
        .collect::<Result<_, _>>()?;
    StartRequest::new(spec, volumes, networks)
}

fn volume(i: usize, v: &pb::PrepareVolume) -> Result<VolumePrep, CommandError> {
    let field = |m: String| CommandError::invalid(format!("volumes[{i}].{m}"));
    let c = v
        .volume
        .as_ref()
        .ok_or_else(|| field("volume: is missing".into()))?;
    let create = crate::convert::storage::create_from_template(c)
        .map_err(|e| field(format!("volume: {e}")))?;
    if v.disk_target.is_empty() {
        return Err(field("disk_target: is empty".into()));
    }
    Ok(VolumePrep {
        create,
        disk_target: v.disk_target.clone(),
    })
}

fn network(i: usize, vm: &uuid::Uuid, n: &pb::PrepareNetwork) -> Result<NetworkPrep, CommandError> {
    let mac = MacAddr::parse(&n.mac).ok_or_else(|| {
        CommandError::invalid(format!(
            "networks[{i}].mac: {:?} is not a MAC address",
            n.mac
        ))
    })?;
    let network = n.network.as_ref().map(|w| match w {
        pb::prepare_network::Network::Vlan(v) => pb::ensure_network::Network::Vlan(v.clone()),
        pb::prepare_network::Network::Vxlan(v) => pb::ensure_network::Network::Vxlan(v.clone()),
    });
    let ensure = pb::EnsureNetwork {
        vm_uuid: vm.to_string(),
        network,
    };
    let (_, network) = crate::convert::network::ensure_network(&ensure)
        .map_err(|e| CommandError::invalid(format!("networks[{i}]: {e}")))?;
    Ok(NetworkPrep { mac, network })
}

/// The wire result of a start with its preparation.
pub fn start_result(
    vm: &csagent_libvirt::VmInfo,
    vnc_port: Option<u16>,
    p: &Prepared,
) -> pb::StartVmResult {
    let path = |p: &std::path::PathBuf| p.to_string_lossy().into_owned();
    pb::StartVmResult {
        vm: Some(crate::convert::link::vm_status(vm)),
        vnc_port: vnc_port.map(u32::from).unwrap_or(0),
        volume_paths: p.volume_paths.iter().map(path).collect(),
        bridges: p.bridges.iter().map(|b| b.to_string()).collect(),
        created_volumes: p.created_volumes.iter().map(path).collect(),
    }
}
