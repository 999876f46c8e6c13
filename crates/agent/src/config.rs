//! The agent's configuration: /etc/csagent/agent.toml, typed and validated.
//!
//! Owns parsing and validation only. Unknown keys, wrong types and values out
//! of range fail at start with the key and the reason, so a typo never turns
//! into a silently ignored setting. Every key is documented in
//! packaging/agent.toml, which is also what `Config::default()` produces.
//! Import of CloudStack's agent.properties lives in config/properties.rs.

pub mod properties;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub const DEFAULT_PATH: &str = "/etc/csagent/agent.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config {path}: key `{key}`: {reason}")]
    Invalid {
        path: PathBuf,
        key: String,
        reason: String,
    },
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub agent: AgentSection,
    pub management: ManagementSection,
    pub hypervisor: HypervisorSection,
    pub network: NetworkSection,
    pub storage: StorageSection,
    pub host: csagent_host::HostConfig,
    pub guest: GuestSection,
    pub migration: MigrationSection,
    pub ha: HaSection,
    pub log: LogSection,
    pub status: StatusSection,
    pub metrics: MetricsSection,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AgentSection {
    /// Host UUID (CloudStack's `guid`). Empty: generated once, kept in state_dir.
    pub guid: String,
    pub state_dir: PathBuf,
    pub zone: String,
    pub pod: String,
    pub cluster: String,
    pub host_tags: Vec<String>,
    /// Commands executed at once (CloudStack's `workers`).
    pub workers: usize,
    /// Default time budget of a command without its own deadline (`cmds.timeout`).
    pub cmds_timeout_secs: u64,
    /// On SIGTERM: how long in-flight commands may run before they are cancelled.
    pub shutdown_grace_secs: u64,
    /// Results kept while the link is down, delivered after reconnect.
    pub outbox_capacity: usize,
    /// Finished command ids remembered so a repeated id is never run twice.
    pub result_cache_size: usize,
    /// Commands accepted but not finished (running or waiting for a worker
    /// or their VM) past which a new one is answered RESOURCE_EXHAUSTED.
    pub max_queued_commands: usize,
}

impl Default for AgentSection {
    fn default() -> Self {
        AgentSection {
            guid: String::new(),
            state_dir: PathBuf::from("/var/lib/csagent"),
            zone: String::new(),
            pod: String::new(),
            cluster: String::new(),
            host_tags: Vec::new(),
            workers: 5,
            cmds_timeout_secs: 7200,
            shutdown_grace_secs: 30,
            outbox_capacity: 10_000,
            result_cache_size: 10_000,
            max_queued_commands: 4096,
        }
    }
}

pub use crate::endpoints::EndpointOrder;

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ManagementSection {
    /// Management endpoints, "host" or "host:port" (CloudStack's `host`).
    pub hosts: Vec<String>,
    /// Port for entries without one (CloudStack's `port`).
    pub port: u16,
    pub order: EndpointOrder,
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub connect_timeout_ms: u64,
    /// Reconnect backoff: full jitter in [0, min(max, initial * 2^attempt)].
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    /// HTTP/2 PING interval and how long to wait for its answer: a dead peer
    /// is noticed within interval + timeout even when nothing else is sent.
    pub keepalive_interval_ms: u64,
    pub keepalive_timeout_ms: u64,
    /// Heartbeat acks missed in a row before the stream is declared dead
    /// (CloudStack's `ping.retries`).
    pub ping_retries: u32,
    /// Largest message accepted from the plane.
    pub max_message_bytes: usize,
    /// SHA-256 of the plane's CA certificate, hex: pinned at enrollment.
    pub ca_fingerprint: String,
    /// A file holding a one-time enrollment token: with no certificate yet,
    /// the agent enrolls with it at start. Empty: no enrollment at start.
    pub enroll_token_file: PathBuf,
    /// Renew the certificate once this fraction of its lifetime has passed.
    pub renew_at: f64,
}

impl Default for ManagementSection {
    fn default() -> Self {
        ManagementSection {
            hosts: Vec::new(),
            port: 8250,
            order: EndpointOrder::Shuffle,
            ca_file: PathBuf::from("/etc/csagent/tls/ca.pem"),
            cert_file: PathBuf::from("/etc/csagent/tls/agent.pem"),
            key_file: PathBuf::from("/etc/csagent/tls/agent.key"),
            connect_timeout_ms: 3000,
            backoff_initial_ms: 500,
            backoff_max_ms: 30_000,
            keepalive_interval_ms: 2000,
            keepalive_timeout_ms: 2000,
            ping_retries: 4,
            max_message_bytes: 16 * 1024 * 1024,
            ca_fingerprint: String::new(),
            enroll_token_file: PathBuf::new(),
            renew_at: 0.66,
        }
    }
}

impl ManagementSection {
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HypervisorSection {
    /// libvirt URI (CloudStack's `hypervisor.uri`).
    pub uri: String,
    /// Time limit of one libvirt call; a hung QEMU cannot hold the agent longer.
    pub call_timeout_ms: u64,
    /// How often the VM power-state snapshot is refreshed.
    pub poll_interval_ms: u64,
}

impl Default for HypervisorSection {
    fn default() -> Self {
        HypervisorSection {
            uri: "qemu:///system".into(),
            call_timeout_ms: 10_000,
            poll_interval_ms: 2000,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BridgeType {
    #[default]
    Native,
    Openvswitch,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkSection {
    pub public_device: String,
    pub private_device: String,
    pub guest_device: String,
    pub bridge_type: BridgeType,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StorageSection {
    pub local_path: PathBuf,
    pub local_uuid: String,
    /// Time limit of one storage operation (the seed's 120 s fault line).
    pub op_timeout_secs: u64,
    /// Time limit of one filesystem call on pool storage: a hung mount fails
    /// the command that touched it with UNAVAILABLE.
    pub fs_timeout_secs: u64,
    /// Directories templates may be copied from by path (secondary storage
    /// mounts); any other path is refused.
    pub template_roots: Vec<PathBuf>,
    /// PEM bundle of CAs trusted for https template URLs besides the public
    /// web roots; empty: those only.
    pub template_ca_file: PathBuf,
}

impl Default for StorageSection {
    fn default() -> Self {
        StorageSection {
            local_path: PathBuf::from("/var/lib/libvirt/images"),
            local_uuid: String::new(),
            op_timeout_secs: 120,
            fs_timeout_secs: 30,
            template_roots: vec![PathBuf::from("/mnt")],
            template_ca_file: PathBuf::new(),
        }
    }
}

impl StorageSection {
    /// Paths and ids serde cannot check: the template CA bundle absolute
    /// when set; the local pool's UUID (or empty: no local pool) and, with
    /// one, an absolute directory.
    fn validate(&self) -> Result<(), (&'static str, String)> {
        let ca = &self.template_ca_file;
        if !ca.as_os_str().is_empty() && !ca.is_absolute() {
            return Err((
                "storage.template_ca_file",
                format!("{:?} is not an absolute path", ca.display()),
            ));
        }
        if self.local_uuid.is_empty() {
            return Ok(());
        }
        if uuid::Uuid::parse_str(&self.local_uuid).is_err() {
            return Err((
                "storage.local_uuid",
                format!("{:?} is not a UUID (empty: no local pool)", self.local_uuid),
            ));
        }
        if !self.local_path.is_absolute() {
            return Err((
                "storage.local_path",
                format!("{:?} is not an absolute path", self.local_path.display()),
            ));
        }
        Ok(())
    }

    /// The storage crate's configuration from this section; `full_clone` is
    /// `[guest] create_full_clone`.
    pub fn storage_config(&self, full_clone: bool) -> csagent_storage::StorageConfig {
        // A full copy by default is qcow2, as CloudStack's; StartVm points
        // a prepared disk with no clone mode at a qcow2 file on that basis.
        let default_clone = match full_clone {
            true => csagent_storage::CloneMode::Full {
                format: csagent_storage::ImageFormat::Qcow2,
            },
            false => csagent_storage::CloneMode::Linked,
        };
        csagent_storage::StorageConfig {
            default_clone,
            default_timeout: Duration::from_secs(self.op_timeout_secs),
            fs_timeout: Duration::from_secs(self.fs_timeout_secs),
            template_roots: self.template_roots.clone(),
            template_ca_file: (!self.template_ca_file.as_os_str().is_empty())
                .then(|| self.template_ca_file.clone()),
            ..csagent_storage::StorageConfig::default()
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GuestSection {
    /// host-passthrough, host-model, custom, or empty for libvirt's default.
    pub cpu_mode: String,
    pub cpu_model: String,
    pub cpu_features: Vec<String>,
    pub memballoon_stats_period_secs: u32,
    pub rng_enable: bool,
    pub watchdog_model: String,
    pub watchdog_action: String,
    pub create_full_clone: bool,
    /// Directories a VM's files (disks, ISOs, kernel, initrd, firmware,
    /// NVRAM, console log) may be in, besides every storage pool's; any
    /// other host path is refused (vm/paths.rs).
    pub path_roots: Vec<PathBuf>,
}

impl GuestSection {
    /// The typed defaults StartVm applies; the error names the bad key.
    pub fn defaults(
        &self,
    ) -> Result<crate::vm::defaults::GuestDefaults, crate::vm::defaults::KeyError> {
        crate::vm::defaults::GuestDefaults::parse(&crate::vm::defaults::GuestKeys {
            cpu_mode: &self.cpu_mode,
            cpu_model: &self.cpu_model,
            cpu_features: &self.cpu_features,
            memballoon_stats_period_secs: self.memballoon_stats_period_secs,
            rng_enable: self.rng_enable,
            watchdog_model: &self.watchdog_model,
            watchdog_action: &self.watchdog_action,
            create_full_clone: self.create_full_clone,
        })
    }
}

impl Default for GuestSection {
    fn default() -> Self {
        GuestSection {
            cpu_mode: String::new(),
            cpu_model: String::new(),
            cpu_features: Vec::new(),
            memballoon_stats_period_secs: 0,
            rng_enable: true,
            watchdog_model: "i6300esb".into(),
            watchdog_action: "none".into(),
            create_full_clone: false,
            path_roots: [
                "/var/lib/libvirt/images",
                "/var/lib/libvirt/boot",
                "/var/lib/libvirt/qemu/nvram",
                "/usr/share/OVMF",
                "/usr/share/AAVMF",
                "/usr/share/qemu",
                "/usr/share/seabios",
                "/usr/share/edk2",
                "/dev/disk/by-path",
                "/dev/disk/by-id",
                "/dev/mapper",
                "/mnt",
                "/var/lib/csagent",
                "/var/log/libvirt/qemu",
                "/var/log/csagent",
            ]
            .map(PathBuf::from)
            .to_vec(),
        }
    }
}

/// Live migration: the defaults of a MigrateVm that leaves them unset, and
/// where this host receives migrations.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MigrationSection {
    /// MiB/s, 0: unlimited.
    pub speed_mibps: u64,
    /// Longest switch-over pause, 0: QEMU's default.
    pub downtime_ms: u64,
    /// Pause the VM after this long to let migration converge, 0: never.
    pub pause_after_ms: u64,
    /// Abort a migration not done after this long (the VM stays), 0: never.
    pub wait_secs: u64,
    /// This host's address on the migration network; empty: its first
    /// routable address. Not the management link's.
    pub address: String,
    /// Migration streams in libvirt/QEMU TLS. Plain TCP only when false.
    pub tls: bool,
    pub auto_converge: bool,
    /// Switch to post-copy after this many pre-copy iterations, 0: never.
    pub post_copy_after_iterations: u64,
    /// Parallel migration connections, 0 or 1: one.
    pub parallel_connections: u32,
}

impl Default for MigrationSection {
    fn default() -> Self {
        MigrationSection {
            speed_mibps: 0,
            downtime_ms: 0,
            pause_after_ms: 0,
            wait_secs: 0,
            address: String::new(),
            tls: true,
            auto_converge: false,
            post_copy_after_iterations: 0,
            parallel_connections: 0,
        }
    }
}

/// High availability: this host's storage heartbeat, read by its
/// neighbours when it goes silent.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HaSection {
    /// Mount points of the shared pools (the same path on every host) that
    /// carry the heartbeat; empty: no storage heartbeat.
    pub pools: Vec<PathBuf>,
    pub heartbeat_interval_secs: u64,
    /// A heartbeat write (or a neighbour's read) slower than this failed.
    pub timeout_secs: u64,
    /// What to do when cut off from the plane and every pool.
    pub on_isolation: OnIsolation,
    pub isolation_after_secs: u64,
}

impl Default for HaSection {
    fn default() -> Self {
        HaSection {
            pools: Vec::new(),
            heartbeat_interval_secs: 5,
            timeout_secs: 10,
            on_isolation: OnIsolation::None,
            isolation_after_secs: 30,
        }
    }
}

/// What the agent does when isolated (`[ha] on_isolation`; see
/// isolation.rs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnIsolation {
    #[default]
    None,
    StopHaVms,
    Reboot,
}

pub use csagent_core::logging::LogFormat;

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    pub format: LogFormat,
    /// A tracing filter, e.g. "info" or "csagent=debug,info".
    pub level: String,
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

/// The operator's local status socket (`csagent status`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StatusSection {
    /// Unix socket answering `csagent status`; created mode 0600, root only.
    /// Empty: no status socket.
    pub socket: PathBuf,
}

impl Default for StatusSection {
    fn default() -> Self {
        StatusSection {
            socket: PathBuf::from("/run/csagent/status.sock"),
        }
    }
}

/// The Prometheus text endpoint, on loopback only.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    pub enabled: bool,
    /// Port on 127.0.0.1; never bound on other addresses.
    pub port: u16,
}

impl Default for MetricsSection {
    fn default() -> Self {
        MetricsSection {
            enabled: false,
            port: 9469,
        }
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().replace('\n', " | "),
        })?;
        cfg.validate()
            .map_err(|(key, reason)| ConfigError::Invalid {
                path: path.to_path_buf(),
                key: key.to_string(),
                reason,
            })?;
        Ok(cfg)
    }

    /// Checks values serde cannot: ranges and relations between keys.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let a = &self.agent;
        let m = &self.management;
        if !a.guid.is_empty() && uuid::Uuid::parse_str(&a.guid).is_err() {
            return Err(("agent.guid", format!("{:?} is not a UUID", a.guid)));
        }
        positive("agent.workers", a.workers as u64)?;
        positive("agent.cmds_timeout_secs", a.cmds_timeout_secs)?;
        positive("agent.outbox_capacity", a.outbox_capacity as u64)?;
        positive("agent.result_cache_size", a.result_cache_size as u64)?;
        positive("agent.max_queued_commands", a.max_queued_commands as u64)?;
        if m.hosts.is_empty() {
            return Err((
                "management.hosts",
                "at least one management endpoint is required".into(),
            ));
        }
        for h in &m.hosts {
            crate::endpoints::Endpoint::parse(h, m.port).map_err(|e| ("management.hosts", e))?;
        }
        positive("management.port", u64::from(m.port))?;
        positive("management.connect_timeout_ms", m.connect_timeout_ms)?;
        positive("management.backoff_initial_ms", m.backoff_initial_ms)?;
        if m.backoff_max_ms < m.backoff_initial_ms {
            return Err((
                "management.backoff_max_ms",
                "must be at least backoff_initial_ms".into(),
            ));
        }
        positive("management.keepalive_interval_ms", m.keepalive_interval_ms)?;
        positive("management.keepalive_timeout_ms", m.keepalive_timeout_ms)?;
        positive("management.ping_retries", u64::from(m.ping_retries))?;
        if m.max_message_bytes < 64 * 1024 {
            return Err((
                "management.max_message_bytes",
                "must be at least 65536".into(),
            ));
        }
        if !(m.renew_at > 0.0 && m.renew_at < 1.0) {
            return Err((
                "management.renew_at",
                format!("{} is not a fraction between 0 and 1", m.renew_at),
            ));
        }
        let fp = csagent_tls::pki::normalize_fingerprint(&m.ca_fingerprint);
        if !fp.is_empty() && (fp.len() != 64 || !fp.chars().all(|c| c.is_ascii_hexdigit())) {
            return Err((
                "management.ca_fingerprint",
                "must be a SHA-256 in hex (64 digits, colons allowed)".into(),
            ));
        }
        if self.hypervisor.uri.is_empty() {
            return Err(("hypervisor.uri", "must not be empty".into()));
        }
        positive(
            "hypervisor.call_timeout_ms",
            self.hypervisor.call_timeout_ms,
        )?;
        positive(
            "hypervisor.poll_interval_ms",
            self.hypervisor.poll_interval_ms,
        )?;
        positive(
            "ha.heartbeat_interval_secs",
            self.ha.heartbeat_interval_secs,
        )?;
        self.guest.defaults()?;
        self.storage.validate()?;
        if self.network.bridge_type == BridgeType::Openvswitch {
            return Err((
                "network.bridge_type",
                "\"openvswitch\" is not supported: csagent builds Linux bridges only; set \"native\""
                    .into(),
            ));
        }
        positive("storage.op_timeout_secs", self.storage.op_timeout_secs)?;
        positive("storage.fs_timeout_secs", self.storage.fs_timeout_secs)?;
        positive("ha.timeout_secs", self.ha.timeout_secs)?;
        positive("ha.isolation_after_secs", self.ha.isolation_after_secs)?;
        if let Some(p) = self.ha.pools.iter().find(|p| !p.is_absolute()) {
            return Err((
                "ha.pools",
                format!("{} is not an absolute path", p.display()),
            ));
        }
        if self.metrics.enabled {
            positive("metrics.port", u64::from(self.metrics.port))?;
        }
        if !self.status.socket.as_os_str().is_empty() && !self.status.socket.is_absolute() {
            return Err(("status.socket", "must be an absolute path or empty".into()));
        }
        if self
            .log
            .level
            .parse::<tracing_subscriber::EnvFilter>()
            .is_err()
        {
            return Err((
                "log.level",
                format!("{:?} is not a valid filter", self.log.level),
            ));
        }
        Ok(())
    }
}

fn positive(key: &'static str, v: u64) -> Result<(), (&'static str, String)> {
    if v == 0 {
        Err((key, "must be greater than 0".into()))
    } else {
        Ok(())
    }
}
