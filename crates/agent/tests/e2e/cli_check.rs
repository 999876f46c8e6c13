//! `csagent check` through the real binary, against a real plane: passes
//! what is right, fails what is wrong with the fix, and exits accordingly.

use csagent_testkit::*;
use csagent_tls::pki::Validity;

async fn check(cfg: &csagent::config::Config, dir: &std::path::Path) -> (Option<i32>, String) {
    let path = dir.join(format!("check-{}.toml", uuid::Uuid::new_v4()));
    std::fs::write(&path, toml::to_string(cfg).unwrap()).unwrap();
    // tokio's Command: the plane serving this check runs on this runtime.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_csagent"))
        .args(["check", "--config", path.to_str().unwrap()])
        .output()
        .await
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn line<'a>(table: &'a str, name: &str) -> &'a str {
    table
        .lines()
        .find(|l| l.contains(name))
        .unwrap_or_else(|| panic!("no {name} line:\n{table}"))
}

#[tokio::test]
async fn check_passes_a_good_host_and_names_what_is_wrong() {
    let f = Fixture::new(fast_liveness()).await;
    let good = f.config();
    let (code, table) = check(&good, f.work.path()).await;
    println!("{table}");
    assert_eq!(code, Some(0), "{table}");
    for name in [
        "config",
        "libvirt",
        "qemu-img",
        "certificate validity",
        "host identity",
        "endpoint",
    ] {
        assert!(line(&table, name).starts_with("pass"), "{name}:\n{table}");
    }

    // A certificate for another host, and one that expired.
    let mut other = good.clone();
    let tls = f.pki.agent(&uuid::Uuid::new_v4());
    other.management.cert_file = tls.cert;
    other.management.key_file = tls.key;
    let (code, table) = check(&other, f.work.path()).await;
    assert_eq!(code, Some(1));
    assert!(line(&table, "host identity").starts_with("FAIL"), "{table}");

    let now = time::OffsetDateTime::now_utc();
    let old = f.pki.agent_with(
        &f.host,
        Validity {
            not_before: now - time::Duration::days(3),
            not_after: now - time::Duration::days(1),
        },
    );
    let mut expired = good.clone();
    expired.management.cert_file = old.cert;
    expired.management.key_file = old.key;
    let (code, table) = check(&expired, f.work.path()).await;
    assert_eq!(code, Some(1));
    assert!(
        line(&table, "certificate validity").starts_with("FAIL"),
        "{table}"
    );
    assert!(table.contains("expired"), "{table}");

    // An endpoint nobody listens on.
    let mut dead = good.clone();
    dead.management.hosts = vec![format!("127.0.0.1:{}", free_port())];
    dead.management.connect_timeout_ms = 500;
    let (code, table) = check(&dead, f.work.path()).await;
    assert_eq!(code, Some(1));
    assert!(line(&table, "endpoint").starts_with("FAIL"), "{table}");
    assert!(table.contains("fix:"), "{table}");

    // A device that does not exist.
    let mut nodev = good.clone();
    nodev.network.guest_device = "csatnodev0".into();
    let (_, table) = check(&nodev, f.work.path()).await;
    assert!(line(&table, "csatnodev0").starts_with("FAIL"), "{table}");
}
