//! Storage commands: what each does with the storage module.
//!
//! Owns the bridge between a command's limits and the storage module's:
//! the command's cancellation and what is left of its deadline become the
//! operation's own, so qemu-img is killed and partial files removed by the
//! storage module itself before dispatch's deadline fires.

use std::sync::Arc;
use std::time::Duration;

use super::{Ctx, Reply};
use csagent_core::error::CommandError;
use csagent_storage::{
    self, CallOpts, CephSecret, CopyTemplate, CreateFromTemplate, CreateVolume, PoolDef, PoolName,
    ResizeVolume, SnapshotName, SnapshotTarget, Storage, VolumeName,
};

/// A validated storage request.
#[derive(Debug)]
pub enum StorageOp {
    CreateVolume(CreateVolume),
    CreateFromTemplate(CreateFromTemplate),
    Resize(ResizeVolume),
    Delete(PoolName, VolumeName),
    Info(PoolName, VolumeName),
    CopyTemplate(CopyTemplate),
    CreateSnapshot(SnapshotTarget, SnapshotName),
    RevertSnapshot(SnapshotTarget, SnapshotName),
    DeleteSnapshot(SnapshotTarget, SnapshotName),
    ListSnapshots(SnapshotTarget),
    AddPool(PoolDef),
    RemovePool(PoolName),
    RefreshPool(PoolName),
    ListPools,
    PutCephSecret(CephSecret),
    RemoveCephSecret(uuid::Uuid),
}

/// Leaves the storage module this much of the deadline to clean up after
/// its own timeout, before dispatch gives up on the command.
const CLEANUP_MARGIN: Duration = Duration::from_millis(200);

pub async fn handle(s: &Arc<Storage>, op: StorageOp, ctx: &Ctx) -> Result<Reply, CommandError> {
    let remaining = ctx
        .deadline
        .saturating_duration_since(std::time::Instant::now());
    let opts = CallOpts::new(ctx.cancel.clone()).with_timeout(
        remaining
            .saturating_sub(CLEANUP_MARGIN)
            .max(Duration::from_millis(1)),
    );
    let progress = progress_sink(ctx);
    let r = match op {
        StorageOp::CreateVolume(r) => s.create_volume(r, opts).await.map(Reply::Volume),
        StorageOp::CreateFromTemplate(r) => s
            .create_volume_from_template(r, opts, Some(progress("full-copy")))
            .await
            .map(Reply::Volume),
        StorageOp::Resize(r) => s.resize_volume(r, opts).await.map(Reply::Volume),
        StorageOp::Delete(p, v) => s
            .delete_volume(&p, &v, opts)
            .await
            .map(|()| Reply::StorageDone),
        StorageOp::Info(p, v) => s.volume_info(&p, &v, opts).await.map(Reply::Volume),
        StorageOp::CopyTemplate(r) => s
            .copy_template(r, opts, Some(progress("copy-template")))
            .await
            .map(Reply::Volume),
        StorageOp::CreateSnapshot(t, n) => s.create_snapshot(t, n, opts).await.map(Reply::Snapshot),
        StorageOp::RevertSnapshot(t, n) => s
            .revert_snapshot(t, n, opts)
            .await
            .map(|()| Reply::StorageDone),
        StorageOp::DeleteSnapshot(t, n) => s
            .delete_snapshot(t, n, opts)
            .await
            .map(|()| Reply::StorageDone),
        StorageOp::ListSnapshots(t) => s.list_snapshots(t, opts).await.map(Reply::Snapshots),
        StorageOp::AddPool(d) => s.add_pool(d, opts).await.map(Reply::Pool),
        StorageOp::RemovePool(n) => s.remove_pool(&n, opts).await.map(|()| Reply::StorageDone),
        StorageOp::RefreshPool(n) => s.refresh_pool(&n, opts).await.map(Reply::Pool),
        StorageOp::ListPools => s.list_pools(opts).await.map(Reply::Pools),
        StorageOp::PutCephSecret(c) => s
            .put_ceph_secret(c, opts)
            .await
            .map(|()| Reply::StorageDone),
        StorageOp::RemoveCephSecret(u) => s
            .remove_ceph_secret(u, opts)
            .await
            .map(|()| Reply::StorageDone),
    };
    r.map_err(CommandError::from)
}

/// Progress of long copies, through the command's reporter.
fn progress_sink(ctx: &Ctx) -> impl Fn(&'static str) -> csagent_storage::ProgressSink + '_ {
    move |stage| {
        let report = Arc::clone(&ctx.progress);
        Arc::new(move |p| report(stage, crate::ctx::Progress::Copy(p)))
    }
}
