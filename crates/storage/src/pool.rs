//! libvirt storage pools: add, remove, refresh, start, and the status
//! reported to the plane (definitions and their XML are in pool_def.rs).
//!
//! Owns: pool lifecycle calls and the map from pool name to the directory
//! volumes live in. Must not: create or read volumes, or report an
//! unreachable/unmounted pool as an empty one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use virt::connect::Connect;
use virt::storage_pool::StoragePool;

use super::error::{ErrorKind, StorageError};
use super::names::PoolName;
pub use super::pool_def::{parse_pool_xml, Monitor, ParsedPool, PoolDef, PoolKind};
use super::qemu_img::RunCtl;
use super::{Bytes, CallOpts, Op, Storage};

/// State of a pool as reported to the plane. Everything but `Running`
/// means "capacity figures are not current; do not place volumes here".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolState {
    Running,
    Inactive,
    Building,
    Degraded,
    /// libvirt cannot reach the storage (e.g. NFS server gone).
    Inaccessible,
    /// Active in libvirt but its directory is not a mount point any more.
    Unmounted,
    /// libvirt did not answer for this pool within the timeout.
    Unreachable,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolStatus {
    pub name: String,
    /// libvirt pool type: dir, netfs, rbd, iscsi, ...
    pub pool_type: String,
    pub path: Option<PathBuf>,
    pub state: PoolState,
    pub capacity: Bytes,
    pub allocation: Bytes,
    pub available: Bytes,
    /// Why the pool is not Running, for the operator.
    pub message: String,
}

/// Pool name -> directory and whether it must be a mount point. Filled on
/// first use from libvirt; pool directories never change for a defined pool.
#[derive(Default)]
pub struct PoolCache {
    map: Mutex<HashMap<PoolName, PoolDir>>,
}

#[derive(Debug, Clone)]
pub struct PoolDir {
    pub path: PathBuf,
    pub must_be_mounted: bool,
}

impl PoolCache {
    fn get(&self, n: &PoolName) -> Option<PoolDir> {
        self.lock().get(n).cloned()
    }
    fn put(&self, n: PoolName, d: PoolDir) {
        self.lock().insert(n, d);
    }
    fn forget(&self, n: &PoolName) {
        self.lock().remove(n);
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PoolName, PoolDir>> {
        // Poison only means a panic elsewhere; the cache stays valid.
        csagent_core::sync::lock(&self.map)
    }
}

/// True if `path` is a mount point per /proc/self/mountinfo. Reading that
/// file never touches the mounted filesystem, so a dead NFS server cannot
/// hang the status report here.
pub fn is_mountpoint(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.to_string_lossy();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|mp| unescape_mountinfo(mp) == want)
}

/// mountinfo escapes space, tab, newline and backslash as \ooo.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn lv<'a>(step: &'static str, object: &'a str) -> impl Fn(virt::error::Error) -> StorageError + 'a {
    move |e| StorageError::libvirt(step, object, e)
}

/// The pool named `n`; a pool libvirt does not know is reported as "pool n
/// not found", the same words for every command that names one.
fn find_pool(conn: &Connect, n: &str) -> Result<StoragePool, StorageError> {
    conn.lookup_storage_pool_by_name(n).map_err(|e| {
        let err = StorageError::libvirt("look up pool", n, e);
        if err.kind() == ErrorKind::NotFound {
            StorageError::NotFound {
                what: format!("pool {n}"),
            }
        } else {
            err
        }
    })
}

fn state_of(raw: u32) -> PoolState {
    use virt::sys;
    match raw {
        sys::VIR_STORAGE_POOL_RUNNING => PoolState::Running,
        sys::VIR_STORAGE_POOL_BUILDING => PoolState::Building,
        sys::VIR_STORAGE_POOL_DEGRADED => PoolState::Degraded,
        sys::VIR_STORAGE_POOL_INACCESSIBLE => PoolState::Inaccessible,
        _ => PoolState::Inactive,
    }
}

/// Status of one pool, read on a blocking thread. Refreshes active pools
/// first so capacity is current.
fn status_of(pool: &StoragePool, refresh: bool) -> Result<PoolStatus, StorageError> {
    let name = pool.name().map_err(lv("read pool name", "pool"))?;
    let parsed = parse_pool_xml(&pool.xml_desc(0).map_err(lv("read pool XML", &name))?)?;
    if refresh && pool.is_active().unwrap_or(false) {
        pool.refresh(0).map_err(lv("refresh pool", &name))?;
    }
    let info = pool.info().map_err(lv("read pool info", &name))?;
    let mut st = PoolStatus {
        name,
        pool_type: parsed.pool_type.clone(),
        path: parsed.target.clone(),
        state: state_of(info.state),
        capacity: Bytes(info.capacity),
        allocation: Bytes(info.allocation),
        available: Bytes(info.available),
        message: String::new(),
    };
    if st.state == PoolState::Running && parsed.pool_type == "netfs" {
        if let Some(t) = &parsed.target {
            if !is_mountpoint(t) {
                st.state = PoolState::Unmounted;
                st.message = format!("{} is not mounted; restart the pool", t.display());
            }
        }
    }
    if st.state != PoolState::Running {
        // Figures of a pool that is not running are stale: never report
        // them as "empty" or "full".
        st.capacity = Bytes(0);
        st.allocation = Bytes(0);
        st.available = Bytes(0);
        if st.message.is_empty() {
            st.message = format!("pool is {:?} in libvirt", st.state);
        }
    }
    Ok(st)
}

fn define_and_start(conn: &Connect, def: &PoolDef, xml: &str) -> Result<(), StorageError> {
    let name = def.name.as_str();
    let pool = conn
        .define_storage_pool_xml(xml, 0)
        .map_err(lv("define pool", name))?;
    let started = (|| {
        if matches!(def.kind, PoolKind::Dir { .. } | PoolKind::Netfs { .. }) {
            pool.build(0).map_err(lv("build pool", name))?;
        }
        pool.create(0).map_err(lv("start pool", name))?;
        pool.set_autostart(true)
            .map_err(lv("set pool autostart", name))
    })();
    if let Err(e) = started {
        // Clean failure: a pool that cannot start is not left defined.
        let _ = pool.destroy();
        let _ = pool.undefine();
        return Err(e);
    }
    Ok(())
}

impl Storage {
    fn pool_ctl(&self, opts: &CallOpts) -> RunCtl {
        self.ctl(Op::Pool, opts)
    }

    /// Defines, builds, starts and autostarts a pool. Adding a pool that
    /// already exists with the same type and target is a no-op returning its
    /// status (the plane re-sends pools after reconnect); a different
    /// definition under the same name is AlreadyExists.
    pub async fn add_pool(&self, def: PoolDef, opts: CallOpts) -> Result<PoolStatus, StorageError> {
        def.validate()?;
        if let PoolKind::SharedMountPoint { path } = &def.kind {
            if !is_mountpoint(path) {
                return Err(StorageError::Unavailable {
                    what: format!("shared mount point {}", path.display()),
                    reason: "it is not mounted; mount it on this host first".into(),
                });
            }
        }
        let xml = def.to_xml()?;
        let ctl = self.pool_ctl(&opts);
        let d = def.clone();
        let status = self
            .libvirt("add pool", def.name.as_str(), &ctl, move |conn| {
                let name = d.name.as_str();
                match conn.lookup_storage_pool_by_name(name) {
                    Ok(existing) => same_pool_or_conflict(&existing, &d),
                    Err(_) => {
                        define_and_start(conn, &d, &xml)?;
                        let p = find_pool(conn, name)?;
                        status_of(&p, false)
                    }
                }
            })
            .await?;
        if let Some(dir) = def.kind.dir() {
            self.pools.put(
                def.name.clone(),
                PoolDir {
                    path: dir.to_path_buf(),
                    must_be_mounted: def.kind.must_be_mounted(),
                },
            );
        }
        Ok(status)
    }

    /// Stops and undefines a pool; volume files are left in place (a pool
    /// holds VM disks; deleting them is a separate, explicit command).
    pub async fn remove_pool(&self, name: &PoolName, opts: CallOpts) -> Result<(), StorageError> {
        let ctl = self.pool_ctl(&opts);
        let n = name.to_string();
        self.pools.forget(name);
        self.libvirt("remove pool", name.as_str(), &ctl, move |conn| {
            let p = find_pool(conn, &n)?;
            if p.is_active().unwrap_or(false) {
                p.destroy().map_err(lv("stop pool", &n))?;
            }
            p.undefine().map_err(lv("undefine pool", &n))
        })
        .await
    }

    /// Starts an inactive pool (e.g. after the NFS server came back).
    pub async fn start_pool(
        &self,
        name: &PoolName,
        opts: CallOpts,
    ) -> Result<PoolStatus, StorageError> {
        let ctl = self.pool_ctl(&opts);
        let n = name.to_string();
        self.libvirt("start pool", name.as_str(), &ctl, move |conn| {
            let p = find_pool(conn, &n)?;
            if !p.is_active().unwrap_or(false) {
                p.create(0).map_err(lv("start pool", &n))?;
            }
            status_of(&p, false)
        })
        .await
    }

    pub async fn refresh_pool(
        &self,
        name: &PoolName,
        opts: CallOpts,
    ) -> Result<PoolStatus, StorageError> {
        let ctl = self.pool_ctl(&opts);
        let n = name.to_string();
        self.libvirt("refresh pool", name.as_str(), &ctl, move |conn| {
            let p = find_pool(conn, &n)?;
            if !p.is_active().unwrap_or(false) {
                return Err(StorageError::Unavailable {
                    what: format!("pool {n}"),
                    reason: "it is not running; start it first".into(),
                });
            }
            status_of(&p, true)
        })
        .await
    }

    /// Status of every pool for the host report. A pool whose status
    /// cannot be read in time is reported Unreachable, never left out.
    pub async fn list_pools(&self, opts: CallOpts) -> Result<Vec<PoolStatus>, StorageError> {
        let ctl = self.pool_ctl(&opts);
        let names = self
            .libvirt("list pools", "host", &ctl, |conn| {
                let pools = conn
                    .list_all_storage_pools(0)
                    .map_err(lv("list pools", "host"))?;
                Ok(pools
                    .iter()
                    .filter_map(|p| p.name().ok())
                    .collect::<Vec<_>>())
            })
            .await?;
        let mut out = Vec::with_capacity(names.len());
        for n in names {
            // Each pool gets the whole budget: one hung NFS pool must not
            // make the others look unreachable.
            let one = RunCtl::new(ctl.budget, ctl.cancel.clone()).with_fs_timeout(ctl.fs_timeout);
            out.push(self.one_status(n, &one).await?);
        }
        Ok(out)
    }

    async fn one_status(&self, n: String, ctl: &RunCtl) -> Result<PoolStatus, StorageError> {
        let name = n.clone();
        let r = self
            .libvirt("pool status", &n, ctl, move |conn| {
                let p = find_pool(conn, &name)?;
                status_of(&p, true)
            })
            .await;
        let mut st = match r {
            Ok(st) => st,
            Err(e @ StorageError::Cancelled { .. }) => return Err(e),
            Err(e) => PoolStatus {
                name: n.clone(),
                pool_type: String::new(),
                path: None,
                state: if e.kind() == ErrorKind::DeadlineExceeded {
                    PoolState::Unreachable
                } else {
                    PoolState::Inaccessible
                },
                capacity: Bytes(0),
                allocation: Bytes(0),
                available: Bytes(0),
                message: e.to_string(),
            },
        };
        if let Ok(pn) = PoolName::new(&n) {
            let shared = self.pools.get(&pn).is_some_and(|d| d.must_be_mounted);
            if shared && st.state == PoolState::Running {
                if let Some(p) = &st.path {
                    if !is_mountpoint(p) {
                        st.state = PoolState::Unmounted;
                        st.message = format!("{} is not mounted", p.display());
                        st.capacity = Bytes(0);
                        st.allocation = Bytes(0);
                        st.available = Bytes(0);
                    }
                }
            }
        }
        Ok(st)
    }

    /// Directory of a file-based pool, checked to be usable right now:
    /// running pools only, mounted where it must be.
    pub(crate) async fn pool_dir(
        &self,
        name: &PoolName,
        ctl: &RunCtl,
    ) -> Result<PathBuf, StorageError> {
        let dir = match self.pools.get(name) {
            Some(d) => d,
            None => {
                let d = self.lookup_pool_dir(name, ctl).await?;
                self.pools.put(name.clone(), d.clone());
                d
            }
        };
        if dir.must_be_mounted && !is_mountpoint(&dir.path) {
            return Err(StorageError::Unavailable {
                what: format!("pool {name}"),
                reason: format!("{} is not mounted", dir.path.display()),
            });
        }
        let (p, n) = (dir.path.clone(), name.clone());
        self.fs("check pool directory", &dir.path, ctl, move || {
            if p.is_dir() {
                return Ok(());
            }
            Err(StorageError::Unavailable {
                what: format!("pool {n}"),
                reason: format!("directory {} is missing", p.display()),
            })
        })
        .await?;
        Ok(dir.path)
    }

    /// The target directory of every pool libvirt knows, in one call: where
    /// VM disks may live (the agent's path confinement).
    pub async fn pool_paths(&self, opts: CallOpts) -> Result<Vec<PathBuf>, StorageError> {
        let ctl = self.pool_ctl(&opts);
        self.libvirt("list pool paths", "host", &ctl, |conn| {
            let pools = conn
                .list_all_storage_pools(0)
                .map_err(lv("list pools", "host"))?;
            Ok(pools
                .iter()
                .filter_map(|p| p.xml_desc(0).ok())
                .filter_map(|x| parse_pool_xml(&x).ok())
                .filter_map(|p| p.target)
                .collect())
        })
        .await
    }

    async fn lookup_pool_dir(
        &self,
        name: &PoolName,
        ctl: &RunCtl,
    ) -> Result<PoolDir, StorageError> {
        let n = name.to_string();
        self.libvirt("look up pool", name.as_str(), ctl, move |conn| {
                let p = find_pool(conn, &n)?;
                let parsed = parse_pool_xml(&p.xml_desc(0).map_err(lv("read pool XML", &n))?)?;
                if !p.is_active().unwrap_or(false) {
                    return Err(StorageError::Unavailable {
                        what: format!("pool {n}"),
                        reason: "it is not running; start or refresh it".into(),
                    });
                }
                match (parsed.pool_type.as_str(), parsed.target) {
                    ("dir" | "netfs" | "fs", Some(path)) => Ok(PoolDir {
                        must_be_mounted: parsed.pool_type != "dir",
                        path,
                    }),
                    (t, _) => Err(StorageError::invalid(
                        format!("pool {n}"),
                        format!("volumes on {t} pools are not supported by this agent; use a dir, netfs or shared mount point pool"),
                    )),
                }
            })
            .await
    }
}

fn same_pool_or_conflict(
    existing: &StoragePool,
    want: &PoolDef,
) -> Result<PoolStatus, StorageError> {
    let name = want.name.as_str();
    let parsed = parse_pool_xml(&existing.xml_desc(0).map_err(lv("read pool XML", name))?)?;
    let same_type = parsed.pool_type == want.kind.libvirt_type();
    let same_dir =
        want.kind.dir().map(Path::to_path_buf) == parsed.target || want.kind.dir().is_none();
    if !(same_type && same_dir) {
        return Err(StorageError::AlreadyExists {
            what: format!(
                "pool {name} (defined differently: type {}, target {:?})",
                parsed.pool_type, parsed.target
            ),
        });
    }
    if !existing.is_active().unwrap_or(false) {
        existing.create(0).map_err(lv("start pool", name))?;
    }
    status_of(existing, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo("/mnt/a\\040b"), "/mnt/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
    }
}
