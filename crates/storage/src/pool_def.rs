//! Typed definitions of libvirt storage pools (dir, NFS, shared mount
//! point, RBD, iSCSI): validation, rendering to pool XML with the escaping
//! writer, and reading back what the agent needs from a pool's XML.
//!
//! Owns: the pool XML format. Must not: call libvirt.

use std::path::{Path, PathBuf};

use quick_xml::events::BytesText;

use super::error::StorageError;
use super::names::{validate_pool_path, PoolName};
use super::xml::{self, XmlWriter};

/// A Ceph monitor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Monitor {
    pub host: String,
    pub port: Option<u16>,
}

/// What kind of pool, and where its data is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolKind {
    /// Local directory.
    Dir { path: PathBuf },
    /// NFS export mounted by libvirt at `path`.
    Netfs {
        host: String,
        export: String,
        path: PathBuf,
    },
    /// A directory some other system mounts on every host (CloudStack's
    /// SharedMountPoint): a libvirt dir pool that must be a mount point.
    SharedMountPoint { path: PathBuf },
    /// Ceph RBD; the cephx key lives in the libvirt secret `secret_uuid`.
    Rbd {
        monitors: Vec<Monitor>,
        ceph_pool: String,
        auth_user: String,
        secret_uuid: uuid::Uuid,
    },
    /// iSCSI target; LUNs appear under /dev/disk/by-path.
    Iscsi {
        host: String,
        port: Option<u16>,
        iqn: String,
    },
}

impl PoolKind {
    pub fn libvirt_type(&self) -> &'static str {
        match self {
            PoolKind::Dir { .. } | PoolKind::SharedMountPoint { .. } => "dir",
            PoolKind::Netfs { .. } => "netfs",
            PoolKind::Rbd { .. } => "rbd",
            PoolKind::Iscsi { .. } => "iscsi",
        }
    }

    /// Directory holding the pool's volume files, for file-based pools.
    pub fn dir(&self) -> Option<&Path> {
        match self {
            PoolKind::Dir { path }
            | PoolKind::Netfs { path, .. }
            | PoolKind::SharedMountPoint { path } => Some(path),
            PoolKind::Rbd { .. } | PoolKind::Iscsi { .. } => None,
        }
    }

    pub(crate) fn must_be_mounted(&self) -> bool {
        matches!(
            self,
            PoolKind::Netfs { .. } | PoolKind::SharedMountPoint { .. }
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolDef {
    pub name: PoolName,
    pub kind: PoolKind,
}

fn validate_host(h: &str) -> Result<(), StorageError> {
    let ok = !h.is_empty()
        && h.len() <= 253
        && h.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
    if ok {
        Ok(())
    } else {
        Err(StorageError::invalid(
            format!("host {h:?}"),
            "must be a DNS name or IP address",
        ))
    }
}

fn validate_token(what: &str, v: &str) -> Result<(), StorageError> {
    if v.is_empty()
        || v.len() > 255
        || v.chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '/')
    {
        return Err(StorageError::invalid(
            format!("{what} {v:?}"),
            "must be non-empty, without whitespace or '/'",
        ));
    }
    Ok(())
}

impl PoolDef {
    pub fn validate(&self) -> Result<(), StorageError> {
        match &self.kind {
            PoolKind::Dir { path } | PoolKind::SharedMountPoint { path } => {
                validate_pool_path(path)
            }
            PoolKind::Netfs { host, export, path } => {
                validate_host(host)?;
                validate_pool_path(Path::new(export))?;
                validate_pool_path(path)
            }
            PoolKind::Rbd {
                monitors,
                ceph_pool,
                auth_user,
                ..
            } => {
                if monitors.is_empty() {
                    return Err(StorageError::invalid(
                        "rbd pool",
                        "needs at least one monitor",
                    ));
                }
                monitors.iter().try_for_each(|m| validate_host(&m.host))?;
                validate_token("ceph pool", ceph_pool)?;
                validate_token("ceph user", auth_user)
            }
            PoolKind::Iscsi { host, iqn, .. } => {
                validate_host(host)?;
                validate_token("iqn", iqn)
            }
        }
    }

    /// libvirt `<pool>` XML; every value goes through the escaping writer.
    pub fn to_xml(&self) -> Result<String, StorageError> {
        let mut w = xml::writer();
        w.create_element("pool")
            .with_attribute(("type", self.kind.libvirt_type()))
            .write_inner_content(|w| {
                xml::text_elem(w, "name", self.name.as_str())?;
                self.write_source(w)?;
                self.write_target(w)
            })
            .map_err(|e| xml::render_err("render pool XML", e))?;
        xml::finish(w, "render pool XML")
    }

    fn write_source(&self, w: &mut XmlWriter) -> std::io::Result<()> {
        match &self.kind {
            PoolKind::Dir { .. } | PoolKind::SharedMountPoint { .. } => Ok(()),
            PoolKind::Netfs { host, export, .. } => {
                w.create_element("source").write_inner_content(|w| {
                    w.create_element("host")
                        .with_attribute(("name", host.as_str()))
                        .write_empty()?;
                    w.create_element("dir")
                        .with_attribute(("path", export.as_str()))
                        .write_empty()?;
                    w.create_element("format")
                        .with_attribute(("type", "nfs"))
                        .write_empty()?;
                    Ok(())
                })?;
                Ok(())
            }
            PoolKind::Rbd {
                monitors,
                ceph_pool,
                auth_user,
                secret_uuid,
            } => {
                w.create_element("source").write_inner_content(|w| {
                    xml::text_elem(w, "name", ceph_pool)?;
                    for m in monitors {
                        let port = m.port.map(|p| p.to_string());
                        let mut e = w
                            .create_element("host")
                            .with_attribute(("name", m.host.as_str()));
                        if let Some(p) = &port {
                            e = e.with_attribute(("port", p.as_str()));
                        }
                        e.write_empty()?;
                    }
                    let uuid = secret_uuid.to_string();
                    w.create_element("auth")
                        .with_attribute(("type", "ceph"))
                        .with_attribute(("username", auth_user.as_str()))
                        .write_inner_content(|w| {
                            w.create_element("secret")
                                .with_attribute(("uuid", uuid.as_str()))
                                .write_empty()
                                .map(drop)
                        })?;
                    Ok(())
                })?;
                Ok(())
            }
            PoolKind::Iscsi { host, port, iqn } => {
                w.create_element("source").write_inner_content(|w| {
                    let port = port.map(|p| p.to_string());
                    let mut e = w
                        .create_element("host")
                        .with_attribute(("name", host.as_str()));
                    if let Some(p) = &port {
                        e = e.with_attribute(("port", p.as_str()));
                    }
                    e.write_empty()?;
                    w.create_element("device")
                        .with_attribute(("path", iqn.as_str()))
                        .write_empty()?;
                    Ok(())
                })?;
                Ok(())
            }
        }
    }

    fn write_target(&self, w: &mut XmlWriter) -> std::io::Result<()> {
        let path = match &self.kind {
            PoolKind::Rbd { .. } => return Ok(()),
            PoolKind::Iscsi { .. } => Path::new("/dev/disk/by-path"),
            other => other.dir().unwrap_or(Path::new("/")),
        };
        let p = path.to_string_lossy();
        w.create_element("target").write_inner_content(|w| {
            w.create_element("path")
                .write_text_content(BytesText::new(&p))
                .map(drop)
        })?;
        Ok(())
    }
}

/// What the agent reads back from a defined pool's XML.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParsedPool {
    pub pool_type: String,
    pub target: Option<PathBuf>,
}

pub fn parse_pool_xml(x: &str) -> Result<ParsedPool, StorageError> {
    let nodes = xml::nodes(x, "read pool XML")?;
    let pool_type = xml::find(&nodes, "pool")
        .and_then(|n| n.attr("type"))
        .unwrap_or_default()
        .to_string();
    let target = xml::find(&nodes, "pool/target/path").map(|n| PathBuf::from(n.text.trim()));
    Ok(ParsedPool { pool_type, target })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_pool_xml_round_trips() {
        let def = PoolDef {
            name: PoolName::new("p<&>").unwrap(),
            kind: PoolKind::Dir {
                path: "/var/lib/a&b".into(),
            },
        };
        let x = def.to_xml().unwrap();
        assert!(x.contains("p&lt;&amp;&gt;"), "{x}");
        let parsed = parse_pool_xml(&x).unwrap();
        assert_eq!(parsed.pool_type, "dir");
        assert_eq!(parsed.target, Some(PathBuf::from("/var/lib/a&b")));
    }
}
