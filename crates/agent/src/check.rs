//! `csagent check`: the preflight an operator runs before (or instead of
//! guessing about) starting the agent.
//!
//! Owns the list of checks and their verdicts: each says pass, warn or fail,
//! what it saw, and for anything not passing, the fix. It reads and dials,
//! never changes anything on the host.

use std::path::Path;
use std::time::Duration;

use crate::config::Config;
use crate::dial::{dial, error_chain, DialOptions};
use crate::endpoints::Endpoint;
use csagent_tls::{self as tls, TlsFiles};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    Pass,
    Warn,
    Fail,
}

#[derive(Debug)]
pub struct Check {
    pub name: String,
    pub verdict: Verdict,
    pub detail: String,
    /// What to do, when not passing.
    pub fix: String,
}

fn check(name: &str, verdict: Verdict, detail: impl Into<String>, fix: &str) -> Check {
    Check {
        name: name.into(),
        verdict,
        detail: detail.into(),
        fix: if verdict == Verdict::Pass {
            String::new()
        } else {
            fix.into()
        },
    }
}

/// Certificates expiring within this are a warning.
const EXPIRY_WARNING: Duration = Duration::from_secs(7 * 24 * 3600);

/// Runs every check; a config that does not load stops the rest.
pub async fn run(config_path: &Path) -> Vec<Check> {
    let cfg = match Config::load(config_path) {
        Ok(c) => c,
        Err(e) => {
            return vec![check(
                "config",
                Verdict::Fail,
                e.to_string(),
                "fix the key named above; `csagent config defaults` shows every key",
            )]
        }
    };
    let mut out = vec![check(
        "config",
        Verdict::Pass,
        format!("{} is valid", config_path.display()),
        "",
    )];
    out.push(kvm(&cfg));
    out.push(libvirt(&cfg).await);
    out.push(qemu_img().await);
    out.extend(certificate(&cfg));
    out.extend(endpoints(&cfg).await);
    out.push(clock());
    out.extend(devices(&cfg));
    out
}

fn kvm(cfg: &Config) -> Check {
    let dev = csagent_host::SysRoots::host().dev;
    let s = csagent_host::facts::kvm_status(&dev, cfg.host.qemu_user.as_deref());
    if s.usable {
        check("kvm", Verdict::Pass, s.detail, "")
    } else {
        check(
            "kvm",
            Verdict::Warn,
            s.detail,
            "load kvm_intel/kvm_amd and make /dev/kvm group kvm, mode 0660 (udev rule), with the QEMU user in group kvm",
        )
    }
}

async fn libvirt(cfg: &Config) -> Check {
    let hv = csagent_libvirt::Hypervisor::start(&cfg.hypervisor.uri, Duration::from_secs(5));
    match hv
        .call("lib_version", |c| {
            c.lib_version()
                .map_err(|e| csagent_libvirt::HvError::libvirt("lib_version", e))
        })
        .await
    {
        Ok(v) => check(
            "libvirt",
            Verdict::Pass,
            format!(
                "{} answers (libvirt {})",
                cfg.hypervisor.uri,
                csagent_host::libvirt_caps::format_version(u64::from(v))
            ),
            "",
        ),
        Err(e) => check(
            "libvirt",
            Verdict::Fail,
            e.to_string(),
            "systemctl enable --now libvirtd (and check hypervisor.uri)",
        ),
    }
}

// `csagent check` asks the installed qemu-img for its version, exactly as an
// operator would: the one external command of the agent crate itself.
#[allow(clippy::disallowed_methods)]
async fn qemu_img() -> Check {
    let out = tokio::process::Command::new("qemu-img")
        .arg("--version")
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(Duration::from_secs(5), out).await {
        Ok(Ok(o)) if o.status.success() => {
            let v = String::from_utf8_lossy(&o.stdout);
            check(
                "qemu-img",
                Verdict::Pass,
                v.lines().next().unwrap_or("").to_string(),
                "",
            )
        }
        Ok(Ok(o)) => check(
            "qemu-img",
            Verdict::Fail,
            format!("exited with {}", o.status),
            "reinstall qemu-utils (Debian/Ubuntu) or qemu-img (RHEL)",
        ),
        Ok(Err(e)) => check(
            "qemu-img",
            Verdict::Fail,
            format!("cannot run qemu-img: {e}"),
            "apt install qemu-utils / dnf install qemu-img",
        ),
        Err(_) => check(
            "qemu-img",
            Verdict::Fail,
            "qemu-img --version hung for 5 s",
            "check the qemu-img binary",
        ),
    }
}

fn files(cfg: &Config) -> TlsFiles {
    TlsFiles {
        ca: cfg.management.ca_file.clone(),
        cert: cfg.management.cert_file.clone(),
        key: cfg.management.key_file.clone(),
    }
}

/// Loadable, key matching and private, identity matching the host, and
/// valid for a while yet.
fn certificate(cfg: &Config) -> Vec<Check> {
    let f = files(cfg);
    let mut out = Vec::new();
    if let Err(e) = tls::client_config(&f) {
        out.push(check("certificate", Verdict::Fail, e.to_string(), "issue a certificate for this host (csagent-mgmt pki issue) and install it with the key at mode 0600"));
        return out;
    }
    let info = match tls::cert_info(&f.cert) {
        Ok(i) => i,
        Err(e) => {
            out.push(check(
                "certificate",
                Verdict::Fail,
                e.to_string(),
                "reissue the certificate",
            ));
            return out;
        }
    };
    let now = csagent_core::time::unix_ms() / 1000;
    let left = info.not_after - now;
    let expiry = if now < info.not_before {
        check(
            "certificate validity",
            Verdict::Fail,
            format!(
                "not valid for another {} s: this host's clock is behind",
                info.not_before - now
            ),
            "synchronise the clock (chrony / systemd-timesyncd)",
        )
    } else if left <= 0 {
        check(
            "certificate validity",
            Verdict::Fail,
            format!("expired {} s ago", -left),
            "issue a new certificate for this host",
        )
    } else if past_renewal_point(&info, now, cfg.management.renew_at) {
        check(
            "certificate validity",
            Verdict::Warn,
            format!("expires in {} h and is past its renewal point", left / 3600),
            "the running agent renews it over the stream; if this persists, see the agent's log for why renewal fails",
        )
    } else {
        check(
            "certificate validity",
            Verdict::Pass,
            format!("valid for {} more days", left / 86_400),
            "",
        )
    };
    out.push(expiry);
    out.push(identity(cfg, info.identity));
    out
}

/// Short-lived certificates are renewed once `renew_at` of their lifetime
/// has passed; later than that (or within the old fixed margin for long
/// ones) the renewal is overdue.
fn past_renewal_point(info: &tls::CertInfo, now: i64, renew_at: f64) -> bool {
    let life = (info.not_after - info.not_before) as f64;
    let renew = info.not_before as f64 + renew_at * life;
    let left = Duration::from_secs((info.not_after - now).max(0).unsigned_abs());
    now as f64 >= renew || left < EXPIRY_WARNING.min(Duration::from_secs_f64(life.max(0.0) / 2.0))
}

fn identity(cfg: &Config, cert_id: Option<String>) -> Check {
    let host = csagent_host::identity::peek_host_uuid(&cfg.agent.state_dir, Some(&cfg.agent.guid));
    match (cert_id, host) {
        (Some(c), Some(h)) if c == h.to_string() => check("host identity", Verdict::Pass, format!("certificate and host agree: {h}"), ""),
        (Some(c), Some(h)) => check("host identity", Verdict::Fail, format!("certificate is for {c}, this host is {h}"), "issue the certificate for this host's UUID, or set agent.guid"),
        (Some(c), None) => check("host identity", Verdict::Warn, format!("certificate is for {c}; this host has no UUID yet (one is generated at first start)"), "set agent.guid to the certificate's UUID"),
        (None, _) => check("host identity", Verdict::Fail, "the certificate carries no host UUID", "issue it with csagent-mgmt pki issue --host-uuid"),
    }
}

async fn endpoints(cfg: &Config) -> Vec<Check> {
    let Ok(client) = tls::client_config(&files(cfg)) else {
        return Vec::new();
    };
    let m = &cfg.management;
    let opts = DialOptions {
        connect_timeout: m.connect_timeout(),
        keepalive_interval: Duration::from_millis(m.keepalive_interval_ms),
        keepalive_timeout: Duration::from_millis(m.keepalive_timeout_ms),
    };
    let mut out = Vec::new();
    for h in &m.hosts {
        let name = format!("endpoint {h}");
        let Ok(ep) = Endpoint::parse(h, m.port) else {
            continue;
        };
        match dial(&ep, client.clone(), &opts).await {
            Ok(_) => out.push(check(&name, Verdict::Pass, "TLS 1.3 handshake and HTTP/2 up", "")),
            Err(e) => out.push(check(&name, Verdict::Fail, error_chain(&e), "check the address, port and firewall, and that the plane's certificate names this endpoint")),
        }
    }
    out
}

fn clock() -> Check {
    match csagent_host::clock::ntp_status() {
        Ok(s) if s.synced => check(
            "clock",
            Verdict::Pass,
            format!(
                "NTP-synchronised (estimated error {} us)",
                s.estimated_error_us
            ),
            "",
        ),
        Ok(_) => check(
            "clock",
            Verdict::Warn,
            "the kernel says the clock is not NTP-synchronised; skew breaks TLS",
            "enable chrony or systemd-timesyncd",
        ),
        Err(e) => check(
            "clock",
            Verdict::Warn,
            e.to_string(),
            "enable chrony or systemd-timesyncd",
        ),
    }
}

fn devices(cfg: &Config) -> Vec<Check> {
    let n = &cfg.network;
    [
        ("network.public_device", &n.public_device),
        ("network.private_device", &n.private_device),
        ("network.guest_device", &n.guest_device),
    ]
    .into_iter()
    .filter(|(_, d)| !d.is_empty())
    .map(|(key, d)| {
        let name = format!("{key} {d}");
        if csagent_network::IfName::new(d).is_err() {
            check(
                &name,
                Verdict::Fail,
                "not a valid interface name",
                "fix the name in agent.toml",
            )
        } else if Path::new("/sys/class/net").join(d).exists() {
            check(&name, Verdict::Pass, "present", "")
        } else {
            check(
                &name,
                Verdict::Fail,
                "no such interface on this host",
                "fix the name in agent.toml or bring the interface up",
            )
        }
    })
    .collect()
}

/// The table `csagent check` prints.
pub fn render(checks: &[Check]) -> String {
    let mut out = String::new();
    for c in checks {
        let tag = match c.verdict {
            Verdict::Pass => "pass",
            Verdict::Warn => "WARN",
            Verdict::Fail => "FAIL",
        };
        out.push_str(&format!("{tag:<5} {:<28} {}\n", c.name, c.detail));
        if !c.fix.is_empty() {
            out.push_str(&format!("{:<5} {:<28} fix: {}\n", "", "", c.fix));
        }
    }
    out
}
