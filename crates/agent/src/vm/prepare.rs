//! StartVm with its storage and networks: makes the volumes a VM boots from
//! (from templates, through the storage module) and the guest networks its
//! NICs plug into (through the network module), then defines and starts it.
//!
//! Owns the order after admission (volumes, networks, define+start) and the
//! undo of a failed start: the volumes this command created are deleted, the
//! networks it added the VM to are released (a bridge is removed only when
//! no other VM uses it), and the error names the step that failed. Must not
//! touch a volume or a bridge user it did not create: a re-sent StartVm
//! finds its volumes and networks already there and reuses them.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::ctx::Ctx;
use csagent_core::error::{CommandError, ErrorKind};
use csagent_domain::{DiskFormat, DiskSource, MacAddr, VmSpec};
use csagent_libvirt::Hypervisor;
use csagent_network::{IfName, Network, NetworkSpec, VmUuid};
use csagent_storage::{CallOpts, CloneMode, CreateFromTemplate, ImageFormat, Storage, VolumeInfo};

/// Time the undo of a failed start may take; it runs even when the command
/// was cancelled, so it has its own budget.
const UNDO_BUDGET: Duration = Duration::from_secs(30);

/// A volume to make (unless it exists) for the disk with target `disk_target`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumePrep {
    pub create: CreateFromTemplate,
    pub disk_target: String,
}

/// A network to ensure for the NIC with MAC `mac`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkPrep {
    pub mac: MacAddr,
    pub network: NetworkSpec,
}

/// A validated StartVm: the spec, with its prepared disks and NICs already
/// pointing where the preparation puts them.
#[derive(Debug, Clone)]
pub struct StartRequest {
    pub spec: VmSpec,
    pub volumes: Vec<VolumePrep>,
    pub networks: Vec<NetworkPrep>,
}

/// What the preparation made or found, in the order of the request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Prepared {
    pub volume_paths: Vec<PathBuf>,
    pub bridges: Vec<IfName>,
    /// Volumes this command created (a subset of `volume_paths`).
    pub created_volumes: Vec<PathBuf>,
}

impl StartRequest {
    /// Ties each preparation to its disk or NIC and validates the result, so
    /// a bad request fails before any side effect. A prepared disk gets a
    /// placeholder path until its volume exists (its real path depends on
    /// the pool's directory, known only to libvirt).
    pub fn new(
        mut spec: VmSpec,
        volumes: Vec<VolumePrep>,
        networks: Vec<NetworkPrep>,
    ) -> Result<Self, CommandError> {
        for (i, v) in volumes.iter().enumerate() {
            if volumes[..i].iter().any(|o| o.disk_target == v.disk_target) {
                return Err(CommandError::invalid(format!(
                    "volumes[{i}].disk_target: disk {:?} is prepared twice",
                    v.disk_target
                )));
            }
            let placeholder = format!("/csagent-prepared/{}/{}", v.create.pool, v.create.name);
            point_disk(&mut spec, v, placeholder)
                .map_err(|m| CommandError::invalid(format!("volumes[{i}].disk_target: {m}")))?;
        }
        for (i, n) in networks.iter().enumerate() {
            n.network
                .validate()
                .map_err(|e| CommandError::invalid(format!("networks[{i}]: {e}")))?;
            plug_nic(&mut spec, n)
                .map_err(|m| CommandError::invalid(format!("networks[{i}].mac: {m}")))?;
        }
        csagent_domain::validate(&spec).map_err(|e| CommandError::invalid(e.to_string()))?;
        Ok(StartRequest {
            spec,
            volumes,
            networks,
        })
    }

    /// A plain start: no preparation.
    pub fn plain(spec: VmSpec) -> Self {
        StartRequest {
            spec,
            volumes: Vec::new(),
            networks: Vec::new(),
        }
    }
}

/// Points the disk `v.disk_target` at `path` with the volume's format.
fn point_disk(spec: &mut VmSpec, v: &VolumePrep, path: String) -> Result<(), String> {
    let disk = spec
        .devices
        .disks
        .iter_mut()
        .find(|d| d.target == v.disk_target)
        .ok_or_else(|| format!("the spec has no disk with target {:?}", v.disk_target))?;
    disk.source = DiskSource::File { path };
    // The host's default mode is a linked clone or a qcow2 copy, so an
    // unset mode is qcow2 either way.
    disk.format = match v.create.mode {
        Some(CloneMode::Full {
            format: ImageFormat::Raw,
        }) => DiskFormat::Raw,
        None
        | Some(CloneMode::Linked)
        | Some(CloneMode::Full {
            format: ImageFormat::Qcow2,
        }) => DiskFormat::Qcow2,
    };
    Ok(())
}

/// Puts the NIC with MAC `n.mac` on the network's bridge.
fn plug_nic(spec: &mut VmSpec, n: &NetworkPrep) -> Result<(), String> {
    let nic = spec
        .devices
        .interfaces
        .iter_mut()
        .find(|i| i.mac == n.mac)
        .ok_or_else(|| format!("the spec has no interface with MAC {}", n.mac))?;
    if nic.openvswitch.is_some() {
        return Err(format!(
            "interface {} is an Open vSwitch port; csagent networks are Linux bridges",
            n.mac
        ));
    }
    nic.bridge = n.network.bridge_name().to_string();
    Ok(())
}

/// The modules a start with preparation uses.
pub struct Deps<'a> {
    pub hypervisor: &'a Hypervisor,
    pub storage: &'a Arc<Storage>,
    /// None when the agent could not open netlink.
    pub network: Option<&'a Network>,
}

/// What to undo if a later step fails.
#[derive(Default)]
struct Undo {
    /// (pool, volume) pairs this command created.
    volumes: Vec<CreateFromTemplate>,
    /// Bridges this command added the VM to as a user.
    bridges: Vec<IfName>,
}

/// Prepares volumes, then networks, then defines and starts (admission has
/// passed). On failure, undoes what this command made and names the step.
pub async fn start(
    deps: &Deps<'_>,
    req: StartRequest,
    ctx: &Ctx,
) -> Result<(super::Started, Prepared), CommandError> {
    let mut undo = Undo::default();
    let vm = VmUuid(req.spec.uuid.0);
    let r = run(deps, req, ctx, &mut undo).await;
    if r.is_err() {
        rollback(deps, vm, undo, &ctx.command_id).await;
    }
    r
}

async fn run(
    deps: &Deps<'_>,
    mut req: StartRequest,
    ctx: &Ctx,
    undo: &mut Undo,
) -> Result<(super::Started, Prepared), CommandError> {
    let mut prepared = Prepared::default();
    for v in &req.volumes {
        let step = || format!("prepare-volume {}/{}", v.create.pool, v.create.name);
        still_wanted(ctx, &step())?;
        let (info, created) = volume(deps.storage, &v.create, ctx)
            .await
            .map_err(|e| named(step(), e))?;
        if created {
            undo.volumes.push(v.create.clone());
            prepared.created_volumes.push(info.path.clone());
        }
        let path = info.path.to_string_lossy().into_owned();
        point_disk(&mut req.spec, v, path).map_err(|m| named(step(), internal(m)))?;
        prepared.volume_paths.push(info.path);
    }
    let vm = VmUuid(req.spec.uuid.0);
    for n in &req.networks {
        let bridge = n.network.bridge_name();
        let step = || format!("ensure-network {bridge}");
        still_wanted(ctx, &step())?;
        let net = deps.network.ok_or_else(|| named(step(), no_network()))?;
        let before = net.bridge_users(&bridge).await;
        let got = net
            .ensure_network(vm, &n.network)
            .await
            .map_err(|e| named(step(), CommandError::from(e)))?;
        if net.bridge_users(&got).await > before {
            undo.bridges.push(got.clone());
        }
        prepared.bridges.push(got);
    }
    // Once libvirt starts the VM it is started: a cancel or deadline after
    // this point is answered by the VM's real state, not by undoing it.
    still_wanted(ctx, "define-and-start")?;
    let started = super::start(deps.hypervisor, req.spec, ctx)
        .await
        .map_err(|e| named("define-and-start".into(), e))?;
    Ok((started, prepared))
}

/// StartVm stops itself (dispatch never drops it, so the undo runs): before
/// each step it ends if the plane cancelled it or its deadline passed.
fn still_wanted(ctx: &Ctx, next: &str) -> Result<(), CommandError> {
    if ctx.cancel.is_cancelled() {
        return Err(CommandError::new(
            ErrorKind::Cancelled,
            format!("cancelled before step {next}; what the command made is undone"),
        ));
    }
    if std::time::Instant::now() >= ctx.deadline {
        return Err(CommandError::new(
            ErrorKind::DeadlineExceeded,
            format!("deadline exceeded before step {next} (time spent queueing counts); what the command made is undone"),
        ));
    }
    Ok(())
}

/// The volume `c` describes: found if it exists (true when created here).
async fn volume(
    s: &Arc<Storage>,
    c: &CreateFromTemplate,
    ctx: &Ctx,
) -> Result<(VolumeInfo, bool), CommandError> {
    match s.volume_info(&c.pool, &c.name, opts(ctx)).await {
        Ok(info) => return Ok((info, false)),
        Err(e) if e.kind() == csagent_storage::ErrorKind::NotFound => {}
        Err(e) => return Err(CommandError::from(e)),
    }
    s.create_volume_from_template(c.clone(), opts(ctx), None)
        .await
        .map(|i| (i, true))
        .map_err(CommandError::from)
}

/// The command's cancellation and what is left of its deadline.
fn opts(ctx: &Ctx) -> CallOpts {
    let left = ctx
        .deadline
        .saturating_duration_since(std::time::Instant::now());
    CallOpts::new(ctx.cancel.clone()).with_timeout(left.max(Duration::from_millis(1)))
}

/// Undoes in reverse order; a failure to undo is logged (the operator must
/// see it) and does not hide the error that caused the undo.
async fn rollback(deps: &Deps<'_>, vm: VmUuid, undo: Undo, command_id: &str) {
    if let Some(net) = deps.network {
        for br in undo.bridges.iter().rev() {
            if let Err(e) = net.release_network(vm, br).await {
                tracing::error!(command_id, vm = %vm, bridge = %br, error = %e,
                    "undo of a failed StartVm could not release the network; release it by hand");
            }
        }
    }
    for v in undo.volumes.iter().rev() {
        let o = CallOpts::new(CancellationToken::new()).with_timeout(UNDO_BUDGET);
        if let Err(e) = deps.storage.delete_volume(&v.pool, &v.name, o).await {
            tracing::error!(command_id, vm = %vm, pool = %v.pool, volume = %v.name, error = %e,
                "undo of a failed StartVm could not delete the volume it made; delete it by hand");
        }
    }
}

/// Prefixes the step to the message, once.
fn named(step: String, e: CommandError) -> CommandError {
    if e.message.starts_with(&step) {
        return e;
    }
    CommandError::new(e.kind, format!("{step}: {}", e.message))
}

fn internal(m: String) -> CommandError {
    CommandError::new(ErrorKind::Internal, m)
}

fn no_network() -> CommandError {
    CommandError::new(
        ErrorKind::Unavailable,
        "guest networking is unavailable on this agent (netlink could not be opened at start; see the agent log)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use csagent_domain::{Disk, Interface};
    use csagent_storage::{PoolName, VolumeName};

    fn spec() -> VmSpec {
        let json = include_str!("../../tests/golden/domain/kernel-boot.json");
        let p: csagent_proto::v1::VmSpec = serde_json::from_str(json).unwrap();
        crate::convert::domain::spec_from_proto(&p).unwrap()
    }

    fn vol(target: &str) -> VolumePrep {
        VolumePrep {
            create: CreateFromTemplate {
                pool: PoolName::new("p").unwrap(),
                name: VolumeName::new("root").unwrap(),
                template: VolumeName::new("tpl").unwrap(),
                mode: Some(CloneMode::Linked),
                size: None,
            },
            disk_target: target.into(),
        }
    }

    fn net(mac: MacAddr) -> NetworkPrep {
        NetworkPrep {
            mac,
            network: NetworkSpec::Vlan {
                physical: IfName::new("eth9").unwrap(),
                vlan: csagent_network::VlanId::new(42).unwrap(),
                mtu: None,
            },
        }
    }

    fn disk<'a>(s: &'a VmSpec, t: &str) -> &'a Disk {
        s.devices.disks.iter().find(|d| d.target == t).unwrap()
    }

    #[test]
    fn preparation_rewires_the_disk_and_the_nic() {
        let s = spec();
        let nic: &Interface = &s.devices.interfaces[0];
        let mac = nic.mac;
        let r = StartRequest::new(s.clone(), vec![vol("vda")], vec![net(mac)]).unwrap();
        let d = disk(&r.spec, "vda");
        assert_eq!(d.format, DiskFormat::Qcow2);
        assert!(
            matches!(&d.source, DiskSource::File { path } if path == "/csagent-prepared/p/root")
        );
        let want = net(mac).network.bridge_name().to_string();
        assert_eq!(r.spec.devices.interfaces[0].bridge, want);
    }

    #[test]
    fn bad_preparations_are_refused_naming_the_field() {
        let s = spec();
        let e = StartRequest::new(s.clone(), vec![vol("vdz")], vec![]).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidArgument);
        assert!(e.message.starts_with("volumes[0].disk_target"), "{e}");
        let e = StartRequest::new(s.clone(), vec![vol("vda"), vol("vda")], vec![]).unwrap_err();
        assert!(e.message.contains("prepared twice"), "{e}");
        let stranger = MacAddr::parse("52:54:00:00:00:99").unwrap();
        let e = StartRequest::new(s, vec![], vec![net(stranger)]).unwrap_err();
        assert!(e.message.starts_with("networks[0].mac"), "{e}");
    }

    #[test]
    fn named_prefixes_once() {
        let e = named("ensure-network br".into(), internal("x".into()));
        assert_eq!(e.message, "ensure-network br: x");
        assert_eq!(named("ensure-network br".into(), e.clone()), e);
    }
}
