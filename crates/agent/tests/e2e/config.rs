//! Configuration: the documented file, clear errors naming the key, and the
//! import of CloudStack's agent.properties through the real binary.

use std::path::Path;
use std::process::Command;

use csagent::config::Config;

fn keys(prefix: &str, v: &toml::Value, out: &mut Vec<String>) {
    if let toml::Value::Table(t) = v {
        for (k, v) in t {
            let path = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            if v.is_table() {
                keys(&path, v, out);
            } else {
                out.push(path);
            }
        }
    }
}

#[test]
fn packaged_config_documents_every_key_with_its_default() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../packaging/agent.toml"
    ))
    .unwrap();
    let mut documented = Vec::new();
    keys(
        "",
        &toml::from_str::<toml::Value>(&text).unwrap(),
        &mut documented,
    );
    let mut all = Vec::new();
    keys(
        "",
        &toml::Value::try_from(Config::default()).unwrap(),
        &mut all,
    );
    documented.sort();
    all.sort();
    assert_eq!(documented, all, "packaging/agent.toml and Config differ");
    // As shipped it refuses to start until an endpoint is configured...
    let e = Config::parse(&text, Path::new("agent.toml"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("management.hosts"), "{e}");
    // ...and with one it is exactly the defaults.
    let text = text.replace("hosts = []", "hosts = [\"mgmt.example\"]");
    let mut cfg = Config::parse(&text, Path::new("agent.toml")).unwrap();
    cfg.management.hosts.clear();
    assert_eq!(cfg, Config::default());
}

#[test]
fn invalid_config_names_the_key_and_reason() {
    let base = "[management]\nhosts = [\"m1\"]\n";
    let cases = [
        (format!("{base}[agent]\nworkerz = 3\n"), "workerz"),
        (format!("{base}[agent]\nworkers = \"five\"\n"), "workers"),
        (format!("{base}[agent]\nworkers = 0\n"), "agent.workers"),
        (
            format!("{base}[agent]\nguid = \"not-a-uuid\"\n"),
            "agent.guid",
        ),
        (
            "[management]\nhosts = [\"a/b\"]\n".to_string(),
            "management.hosts",
        ),
        (format!("{base}[log]\nformat = \"xml\"\n"), "format"),
        // Keys that would otherwise do nothing are refused, not ignored.
        (
            format!("{base}[network]\nbridge_type = \"openvswitch\"\n"),
            "network.bridge_type",
        ),
        (
            format!("{base}[guest]\ncpu_mode = \"fast\"\n"),
            "guest.cpu_mode",
        ),
        (
            format!("{base}[guest]\nwatchdog_model = \"x\"\n"),
            "guest.watchdog_model",
        ),
    ];
    for (text, key) in cases {
        let e = Config::parse(&text, Path::new("t.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(key), "error for {key:?} does not name it: {e}");
    }
}

#[test]
fn run_with_invalid_config_fails_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, "[management]\nhosts = [\"m1\"]\nport = 70000\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_csagent"))
        .args(["run", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("port"), "{err}");
}

#[test]
fn import_properties_maps_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    let props = dir.path().join("agent.properties");
    std::fs::write(
        &props,
        "guid=1b4e28ba-2fa1-11d2-883f-0016d3cca427\nhost=10.1.1.1,10.1.1.2@roundrobin\nport=8250\n\
         workers=9\nhypervisor.uri=qemu:///system\nkeystore.passphrase=x\nresource=com.cloud.Foo\n\
         guest.cpu.mode=host-passthrough\nlocal.storage.path=/srv/pool\n",
    )
    .unwrap();
    let out_path = dir.path().join("agent.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_csagent"))
        .args([
            "config",
            "import-properties",
            props.to_str().unwrap(),
            "-o",
            out_path.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not imported: keystore.passphrase"), "{err}");
    assert!(err.contains("not imported: resource"), "{err}");
    let cfg = Config::load(&out_path).unwrap();
    assert_eq!(cfg.management.hosts, vec!["10.1.1.1", "10.1.1.2"]);
    assert_eq!(
        cfg.management.order,
        csagent::config::EndpointOrder::Roundrobin
    );
    assert_eq!(cfg.agent.workers, 9);
    assert_eq!(cfg.guest.cpu_mode, "host-passthrough");
    assert_eq!(cfg.storage.local_path, Path::new("/srv/pool"));
}
