//! The libvirt secret holding a Ceph (cephx) key, which RBD pools and RBD
//! disks reference by UUID.
//!
//! Owns: secret XML and setting its value. Must not: log, print or return
//! the key (its Debug is redacted), or keep it anywhere but libvirt.

use std::fmt;

use base64::Engine;
use quick_xml::events::BytesText;

use super::error::StorageError;
use super::{xml, CallOpts, Op, Storage};

/// A base64 cephx key as `ceph auth get-key` prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct CephKey(String);

impl CephKey {
    pub fn new(b64: impl Into<String>) -> Result<Self, StorageError> {
        let k = CephKey(b64.into());
        k.decode()?;
        Ok(k)
    }

    fn decode(&self) -> Result<Vec<u8>, StorageError> {
        match base64::engine::general_purpose::STANDARD.decode(self.0.trim()) {
            Ok(v) if !v.is_empty() => Ok(v),
            // The key itself never goes into an error message.
            _ => Err(StorageError::invalid(
                "ceph key",
                "is not valid non-empty base64",
            )),
        }
    }
}

impl fmt::Debug for CephKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CephKey(<redacted>)")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CephSecret {
    pub uuid: uuid::Uuid,
    /// Ceph user without the "client." prefix, e.g. "admin".
    pub user: String,
    pub key: CephKey,
}

impl CephSecret {
    /// Private, persistent secret; the usage name carries the UUID because
    /// libvirt refuses two secrets with one usage name.
    pub fn to_xml(&self) -> Result<String, StorageError> {
        let uuid = self.uuid.to_string();
        let usage = format!("client.{} secret {uuid}", self.user);
        let mut w = xml::writer();
        w.create_element("secret")
            .with_attribute(("ephemeral", "no"))
            .with_attribute(("private", "yes"))
            .write_inner_content(|w| {
                xml::text_elem(w, "uuid", &uuid)?;
                w.create_element("usage")
                    .with_attribute(("type", "ceph"))
                    .write_inner_content(|w| {
                        w.create_element("name")
                            .write_text_content(BytesText::new(&usage))
                            .map(drop)
                    })
                    .map(drop)
            })
            .map_err(|e| xml::render_err("render secret XML", e))?;
        xml::finish(w, "render secret XML")
    }
}

impl Storage {
    /// Defines (or redefines) the secret and sets its value.
    pub async fn put_ceph_secret(&self, s: CephSecret, opts: CallOpts) -> Result<(), StorageError> {
        if s.user.is_empty() || s.user.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(StorageError::invalid(
                format!("ceph user {:?}", s.user),
                "must be a non-empty token",
            ));
        }
        let value = s.key.decode()?;
        let xml = s.to_xml()?;
        let ctl = self.ctl(Op::Pool, &opts);
        let obj = format!("ceph secret {}", s.uuid);
        let o = obj.clone();
        self.libvirt("define secret", &obj, &ctl, move |conn| {
            let sec = conn
                .define_secret_xml(&xml, 0)
                .map_err(|e| StorageError::libvirt("define secret", &o, e))?;
            sec.set_value(&value, 0)
                .map_err(|e| StorageError::libvirt("set secret value", &o, e))
        })
        .await
    }

    pub async fn remove_ceph_secret(
        &self,
        uuid: uuid::Uuid,
        opts: CallOpts,
    ) -> Result<(), StorageError> {
        let ctl = self.ctl(Op::Pool, &opts);
        let obj = format!("ceph secret {uuid}");
        let o = obj.clone();
        self.libvirt("remove secret", &obj, &ctl, move |conn| {
            let sec = conn
                .lookup_secret_by_uuid_string(&uuid.to_string())
                .map_err(|_| StorageError::NotFound { what: o.clone() })?;
            sec.undefine()
                .map_err(|e| StorageError::libvirt("remove secret", &o, e))
        })
        .await
    }
}
