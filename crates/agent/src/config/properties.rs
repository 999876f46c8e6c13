//! Import of CloudStack's agent.properties into csagent's agent.toml.
//!
//! Owns the Java-properties reading (comments, `=`/`:`/space separators, line
//! continuations, backslash escapes) and the key-by-key mapping. Every key that
//! cannot be mapped is reported with the reason, so an operator migrating a
//! host knows exactly what did not carry over. It never writes files.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::{BridgeType, Config, EndpointOrder};

/// The outcome of an import: the config, and what did not carry over.
pub struct Import {
    pub config: Config,
    /// (key, reason) for every key that was not mapped.
    pub unmapped: Vec<(String, String)>,
}

/// Parses Java properties text into key/value pairs (last one wins).
pub fn parse_properties(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut logical = String::new();
    for raw in text.lines() {
        // Leading whitespace is dropped on first and continuation lines alike.
        let line = raw.trim_start();
        if logical.is_empty() && (line.is_empty() || line.starts_with('#') || line.starts_with('!'))
        {
            continue;
        }
        if ends_with_continuation(line) {
            logical.push_str(&line[..line.len() - 1]);
            continue;
        }
        logical.push_str(line);
        let (k, v) = split_pair(&logical);
        out.insert(unescape(&k), unescape(v.trim_start()));
        logical.clear();
    }
    if !logical.is_empty() {
        let (k, v) = split_pair(&logical);
        out.insert(unescape(&k), unescape(v.trim_start()));
    }
    out
}

fn ends_with_continuation(line: &str) -> bool {
    line.chars().rev().take_while(|c| *c == '\\').count() % 2 == 1
}

fn split_pair(line: &str) -> (String, &str) {
    let mut escaped = false;
    for (i, c) in line.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' => escaped = true,
            '=' | ':' => return (line[..i].trim_end().to_string(), &line[i + 1..]),
            c if c.is_whitespace() => {
                let rest = line[i..].trim_start();
                let rest = rest.strip_prefix(['=', ':']).unwrap_or(rest);
                return (line[..i].to_string(), rest);
            }
            _ => {}
        }
    }
    (line.to_string(), "")
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some('u') => {
                let hex: String = chars.by_ref().take(4).collect();
                if let Some(ch) = u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32) {
                    out.push(ch);
                }
            }
            Some(other) => out.push(other),
            None => {}
        }
    }
    out
}

/// Keys that exist in agent.properties but have no meaning for csagent, with why.
const NOT_APPLICABLE: &[(&str, &str)] = &[
    ("keystore.passphrase", "TLS material is PEM files in csagent (management.ca_file/cert_file/key_file); issue them with `csagent-mgmt pki issue` or enrollment"),
    ("resource", "csagent has one built-in KVM resource; there is no Java class to select"),
    ("domr.scripts.dir", "csagent runs no scripts; its handlers are built in"),
    ("libvirt.vif.driver", "interfaces are rendered by csagent's domain model"),
    ("instance", "csagent runs one agent per host"),
    ("paths.script", "csagent runs no scripts"),
];

/// Maps agent.properties text onto a Config.
pub fn import(text: &str) -> Import {
    let props = parse_properties(text);
    let mut cfg = Config::default();
    let mut unmapped = Vec::new();
    for (key, value) in &props {
        if let Err(reason) = apply(&mut cfg, key, value) {
            unmapped.push((key.clone(), reason));
        }
    }
    if cfg.management.hosts.is_empty() {
        unmapped.push((
            "host".into(),
            "missing: management.hosts must be set before the agent can start".into(),
        ));
    }
    Import {
        config: cfg,
        unmapped,
    }
}

fn apply(cfg: &mut Config, key: &str, v: &str) -> Result<(), String> {
    let v = v.trim();
    match key {
        "guid" => cfg.agent.guid = v.to_string(),
        "host" => apply_hosts(cfg, v)?,
        "port" => cfg.management.port = num(v)?,
        "zone" => cfg.agent.zone = v.to_string(),
        "pod" => cfg.agent.pod = v.to_string(),
        "cluster" => cfg.agent.cluster = v.to_string(),
        "workers" => cfg.agent.workers = num(v)?,
        "hypervisor.uri" => cfg.hypervisor.uri = v.to_string(),
        "public.network.device" => cfg.network.public_device = v.to_string(),
        "private.network.device" => cfg.network.private_device = v.to_string(),
        "guest.network.device" => cfg.network.guest_device = v.to_string(),
        "network.bridge.type" => {
            cfg.network.bridge_type = match v {
                "native" => BridgeType::Native,
                "openvswitch" => {
                    return Err(
                        "csagent builds Linux bridges only; Open vSwitch is not supported, so \
                     network.bridge_type stays \"native\""
                            .into(),
                    )
                }
                _ => return Err(format!("unknown bridge type {v:?} (native or openvswitch)")),
            }
        }
        "local.storage.path" => cfg.storage.local_path = PathBuf::from(v),
        "local.storage.uuid" => cfg.storage.local_uuid = v.to_string(),
        "host.reserved.mem.mb" => cfg.host.capacity.reserved_memory_mib = num(v)?,
        "host.reserved.cpu.count" => cfg.host.capacity.reserved_cpus = num(v)?,
        "host.cpu.manual.speed.mhz" => cfg.host.cpu_manual_speed_mhz = num(v)?,
        "host.overcommit.mem.mb" => return Err(overcommit_hint(v)),
        "host.tags" => cfg.agent.host_tags = list(v, ','),
        "guest.cpu.mode" => cfg.guest.cpu_mode = v.to_string(),
        "guest.cpu.model" => cfg.guest.cpu_model = v.to_string(),
        "guest.cpu.features" => cfg.guest.cpu_features = list(v, ' '),
        "vm.migrate.speed" => cfg.migration.speed_mibps = non_negative(v)?,
        "vm.migrate.downtime" => cfg.migration.downtime_ms = non_negative(v)?,
        "vm.migrate.pauseafter" => cfg.migration.pause_after_ms = non_negative(v)?,
        "vm.migrate.wait" => cfg.migration.wait_secs = non_negative(v)?,
        "cmds.timeout" => cfg.agent.cmds_timeout_secs = num(v)?,
        "ping.retries" => cfg.management.ping_retries = num(v)?,
        "vm.memballoon.stats.period" => cfg.guest.memballoon_stats_period_secs = num(v)?,
        "vm.rng.enable" => cfg.guest.rng_enable = boolean(v)?,
        "vm.watchdog.model" => cfg.guest.watchdog_model = v.to_string(),
        "vm.watchdog.action" => cfg.guest.watchdog_action = v.to_string(),
        "create.full.clone" => cfg.guest.create_full_clone = boolean(v)?,
        other => {
            return Err(NOT_APPLICABLE
                .iter()
                .find(|(k, _)| *k == other)
                .map(|(_, why)| (*why).to_string())
                .unwrap_or_else(|| "no csagent equivalent; not imported".into()))
        }
    }
    Ok(())
}

/// CloudStack adds a fixed number of MiB; csagent offers memory by a factor,
/// which stays right when the host's memory changes. Say what to set.
fn overcommit_hint(v: &str) -> String {
    format!(
        "csagent expresses memory overcommit as a factor: set host.capacity.memory_overcommit \
         (e.g. 1.25) instead of {v} MiB"
    )
}

/// `host=a,b,c@roundrobin`: a comma list with an optional ordering suffix.
fn apply_hosts(cfg: &mut Config, v: &str) -> Result<(), String> {
    let (list_part, order) = match v.rsplit_once('@') {
        Some((l, o)) => (l, Some(o)),
        None => (v, None),
    };
    if let Some(o) = order {
        cfg.management.order = match o {
            "static" => EndpointOrder::Static,
            "roundrobin" => EndpointOrder::Roundrobin,
            "shuffle" => EndpointOrder::Shuffle,
            _ => {
                return Err(format!(
                    "unknown host order {o:?} (static, roundrobin or shuffle)"
                ))
            }
        };
    }
    cfg.management.hosts = list(list_part, ',');
    Ok(())
}

fn list(v: &str, sep: char) -> Vec<String> {
    v.split(sep)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

fn num<T: std::str::FromStr>(v: &str) -> Result<T, String> {
    v.parse()
        .map_err(|_| format!("{v:?} is not a valid number here"))
}

/// CloudStack uses -1 for "auto"/"unset" in migration keys; csagent uses 0.
fn non_negative(v: &str) -> Result<u64, String> {
    let n: i64 = num(v)?;
    Ok(u64::try_from(n).unwrap_or(0))
}

fn boolean(v: &str) -> Result<bool, String> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "yes" | "1" => Ok(true),
        "false" | "no" | "0" => Ok(false),
        _ => Err(format!("{v:?} is not true or false")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn java_properties_syntax() {
        let p = parse_properties(
            "# comment\n! also\nguid = abc\nhost:10.0.0.1,\\\n  10.0.0.2@static\nzone 1\nkey\\=x=y\n",
        );
        assert_eq!(p["guid"], "abc");
        assert_eq!(p["host"], "10.0.0.1,10.0.0.2@static");
        assert_eq!(p["zone"], "1");
        assert_eq!(p["key=x"], "y");
    }

    #[test]
    fn maps_keys_and_reports_the_rest() {
        let imp = import(
            "host=m1,m2:9000@roundrobin\nport=8250\nworkers=7\nhost.tags=a, b\n\
             keystore.passphrase=secret\nfoo.bar=1\nvm.migrate.speed=-1\nvm.rng.enable=false\n\
             network.bridge.type=openvswitch\n",
        );
        let c = &imp.config;
        assert_eq!(c.management.hosts, vec!["m1", "m2:9000"]);
        assert_eq!(c.management.order, EndpointOrder::Roundrobin);
        assert_eq!(c.agent.workers, 7);
        assert_eq!(c.agent.host_tags, vec!["a", "b"]);
        assert_eq!(c.migration.speed_mibps, 0);
        assert!(!c.guest.rng_enable);
        let keys: Vec<_> = imp.unmapped.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            vec!["foo.bar", "keystore.passphrase", "network.bridge.type"]
        );
        assert_eq!(c.network.bridge_type, BridgeType::Native);
        assert!(imp.config.validate().is_ok());
    }

    #[test]
    fn bad_value_is_reported_not_guessed() {
        let imp = import("host=m1\nworkers=many\n");
        assert_eq!(imp.config.agent.workers, 5);
        assert_eq!(imp.unmapped[0].0, "workers");
    }
}
