//! Host identity fixtures: a plane that enrolls, renews, revokes and rotates
//! its CA, with its admin socket, and hosts enrolled through the real
//! Enrollment service.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use csagent::config::Config;
use csagent_mgmt::{Authority, IdentityConfig, Plane, PlaneConfig};
use csagent_tls::TlsFiles;
use tempfile::TempDir;

use super::{agent_config, fast_liveness, TestPki};

pub struct IdPlane {
    pub pki: TestPki,
    pub plane: Plane,
    pub state: TempDir,
    pub admin: PathBuf,
}

/// A plane with host identity on, issuing certificates for `leaf`.
pub async fn identity_plane(leaf: Duration) -> IdPlane {
    let pki = TestPki::new(&["localhost", "127.0.0.1"]);
    let state = tempfile::Builder::new()
        .prefix("csat-id-")
        .tempdir()
        .unwrap();
    let admin = state.path().join("admin.sock");
    let plane = Plane::start_with(
        PlaneConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            tls: pki.server.clone(),
            admin_socket: Some(admin.clone()),
            liveness: fast_liveness(),
            plane_id: "id-plane".into(),
            max_message_bytes: 16 << 20,
            ha: None,
        },
        Some(IdentityConfig {
            tls_dir: pki.dir.path().to_path_buf(),
            state_dir: state.path().join("state"),
            leaf_lifetime: leaf,
        }),
    )
    .await
    .unwrap();
    IdPlane {
        pki,
        plane,
        state,
        admin,
    }
}

/// Where an enrolled host keeps its files.
pub fn host_files(dir: &Path) -> TlsFiles {
    TlsFiles {
        ca: dir.join("tls/ca.pem"),
        cert: dir.join("tls/agent.pem"),
        key: dir.join("tls/agent.key"),
    }
}

impl IdPlane {
    pub fn authority(&self) -> &Arc<Authority> {
        self.plane.authority.as_ref().unwrap()
    }

    pub fn token(&self, host: &uuid::Uuid, ttl: Duration) -> String {
        self.authority().tokens.create(host, ttl).unwrap().token
    }

    pub fn fingerprint(&self) -> String {
        self.authority().fingerprint().unwrap()
    }

    pub fn endpoint(&self) -> String {
        self.plane.addr.to_string()
    }

    /// Enrolls through the Enrollment service as `csagent enroll` does.
    pub async fn try_enroll(
        &self,
        host: &uuid::Uuid,
        token: &str,
        fingerprint: &str,
        dir: &Path,
    ) -> Result<TlsFiles, csagent::identity::IdentityError> {
        let files = host_files(dir);
        csagent::identity::enroll(csagent::identity::EnrollParams {
            plane: &self.endpoint(),
            default_port: 8250,
            token,
            ca_fingerprint: fingerprint,
            host: *host,
            files: &files,
            connect_timeout: Duration::from_secs(2),
        })
        .await?;
        Ok(files)
    }

    /// A host's agent config before enrolment: no certificate yet, this
    /// plane's CA pinned, its files under `dir`.
    pub fn enrolling_config(&self, host: &uuid::Uuid, dir: &Path) -> (TlsFiles, Config) {
        let files = host_files(dir);
        let mut cfg = agent_config(host, &files, &[self.endpoint()], dir);
        cfg.management.ca_fingerprint = self.fingerprint();
        (files, cfg)
    }

    /// A fresh token, enrolled: the host's files.
    pub async fn enroll(&self, host: &uuid::Uuid, dir: &Path) -> TlsFiles {
        let token = self.token(host, Duration::from_secs(60));
        self.try_enroll(host, &token, &self.fingerprint(), dir)
            .await
            .unwrap()
    }
}
