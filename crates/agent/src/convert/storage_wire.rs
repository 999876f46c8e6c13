//! Storage commands at the edge: wire body -> validated `StorageOp` and the
//! lock key it serialises on; replies -> wire results.

use crate::convert::storage::{
    self as cs, remove_ceph_secret, snapshot_request, snapshot_target, volume_ref,
};
use crate::handlers::storage::StorageOp;
use crate::handlers::Reply;
use csagent_core::error::CommandError;
use csagent_proto::v1 as pb;
use csagent_storage::{SnapshotTarget, StorageError};

type Decoded = Result<(StorageOp, Option<String>), CommandError>;

fn volume_key(pool: &str, name: &str) -> Option<String> {
    Some(format!("volume:{pool}/{name}"))
}

fn target_key(t: &SnapshotTarget) -> Option<String> {
    match t {
        SnapshotTarget::Volume { pool, volume } => volume_key(pool.as_str(), volume.as_str()),
        // A UUID shares the VM's lock with lifecycle commands on it.
        SnapshotTarget::Domain { domain } => Some(match uuid::Uuid::parse_str(domain) {
            Ok(u) => u.to_string(),
            Err(_) => format!("vm:{domain}"),
        }),
    }
}

fn conv<T>(r: Result<T, StorageError>) -> Result<T, CommandError> {
    r.map_err(CommandError::from)
}

/// Decodes a storage body; `None` if the body is not a storage command.
pub fn decode(body: &pb::command::Body) -> Option<Decoded> {
    use pb::command::Body as B;
    let d = |f: &dyn Fn() -> Decoded| Some(f());
    match body {
        B::CreateVolume(m) => d(&|| {
            Ok((
                StorageOp::CreateVolume(conv(cs::create_volume(m))?),
                volume_key(&m.pool, &m.name),
            ))
        }),
        B::CreateVolumeFromTemplate(m) => d(&|| {
            Ok((
                StorageOp::CreateFromTemplate(conv(cs::create_from_template(m))?),
                volume_key(&m.pool, &m.name),
            ))
        }),
        B::ResizeVolume(m) => d(&|| {
            Ok((
                StorageOp::Resize(conv(cs::resize_volume(m))?),
                volume_key(&m.pool, &m.name),
            ))
        }),
        B::DeleteVolume(m) => d(&|| {
            let (p, v) = conv(volume_ref(&m.pool, &m.name))?;
            Ok((StorageOp::Delete(p, v), volume_key(&m.pool, &m.name)))
        }),
        B::GetVolumeInfo(m) => d(&|| {
            let (p, v) = conv(volume_ref(&m.pool, &m.name))?;
            Ok((StorageOp::Info(p, v), None))
        }),
        B::CopyTemplate(m) => d(&|| {
            Ok((
                StorageOp::CopyTemplate(conv(cs::copy_template(m))?),
                volume_key(&m.pool, &m.name),
            ))
        }),
        B::CreateSnapshot(m) => {
            d(&|| snapshot(m.target.as_ref(), &m.name, StorageOp::CreateSnapshot))
        }
        B::RevertSnapshot(m) => {
            d(&|| snapshot(m.target.as_ref(), &m.name, StorageOp::RevertSnapshot))
        }
        B::DeleteSnapshot(m) => {
            d(&|| snapshot(m.target.as_ref(), &m.name, StorageOp::DeleteSnapshot))
        }
        B::ListSnapshots(m) => d(&|| {
            let t = conv(snapshot_target(m.target.as_ref()))?;
            Ok((StorageOp::ListSnapshots(t), None))
        }),
        B::AddPool(m) => d(&|| {
            let def = m
                .pool
                .as_ref()
                .ok_or_else(|| CommandError::invalid("add_pool.pool is missing"))?;
            let key = Some(format!("pool:{}", def.name));
            Ok((StorageOp::AddPool(conv(cs::pool_def(def))?), key))
        }),
        B::RemovePool(m) => d(&|| {
            let name = conv(csagent_storage::PoolName::new(&m.name))?;
            Ok((
                StorageOp::RemovePool(name),
                Some(format!("pool:{}", m.name)),
            ))
        }),
        B::RefreshPool(m) => d(&|| {
            let name = conv(csagent_storage::PoolName::new(&m.name))?;
            Ok((
                StorageOp::RefreshPool(name),
                Some(format!("pool:{}", m.name)),
            ))
        }),
        B::ListPools(_) => Some(Ok((StorageOp::ListPools, None))),
        B::PutCephSecret(m) => {
            d(&|| Ok((StorageOp::PutCephSecret(conv(cs::ceph_secret(m))?), None)))
        }
        B::RemoveCephSecret(m) => d(&|| {
            Ok((
                StorageOp::RemoveCephSecret(conv(remove_ceph_secret(m))?),
                None,
            ))
        }),
        _ => None,
    }
}

fn snapshot(
    target: Option<&pb::SnapshotTarget>,
    name: &str,
    op: fn(SnapshotTarget, csagent_storage::SnapshotName) -> StorageOp,
) -> Decoded {
    let (t, n) = conv(snapshot_request(target, name))?;
    let key = target_key(&t);
    Ok((op(t, n), key))
}

/// Encodes a storage reply; gives the reply back if it is not one.
pub fn encode(reply: Reply) -> Result<pb::command_result::Result, Box<Reply>> {
    use pb::command_result::Result as R;
    Ok(match reply {
        Reply::Volume(v) => R::Volume(cs::volume_info(&v)),
        Reply::Snapshot(s) => R::Snapshot(cs::snapshot_info(&s)),
        Reply::Snapshots(l) => R::SnapshotList(pb::SnapshotList {
            snapshots: l.iter().map(cs::snapshot_info).collect(),
        }),
        Reply::Pool(p) => R::Pool(cs::pool_status(&p)),
        Reply::Pools(l) => R::PoolList(pb::PoolList {
            pools: l.iter().map(cs::pool_status).collect(),
        }),
        Reply::StorageDone => R::StorageDone(pb::StorageDone {}),
        other => return Err(Box::new(other)),
    })
}
