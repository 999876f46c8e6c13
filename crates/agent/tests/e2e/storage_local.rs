//! The local storage pool (`[storage] local_uuid`/`local_path`) on the
//! real libvirtd: an agent given one defines, starts and autostarts a dir
//! pool of that name at that path and names it in its Register; a pool
//! already at the path is adopted under its own name, with nothing new
//! defined.

use std::path::Path;

use csagent_testkit::guest::*;
use csagent_testkit::*;

/// Starts an in-process agent on qemu:///system with this local pool; the
/// local pool name its Register carried.
async fn registered_local_pool(uuid: &str, path: &Path) -> String {
    let f = Fixture::new(fast_liveness()).await;
    let mut cfg = f.config();
    cfg.hypervisor.uri = URI.into();
    cfg.storage.local_uuid = uuid.into();
    cfg.storage.local_path = path.into();
    let agent = run_in_process(cfg);
    f.wait_up(String::new).await;
    let name = host_summary(&f.plane, &f.host)
        .map(|h| h.local_pool)
        .unwrap_or_default();
    agent.stop().await;
    name
}

fn pool_info(name: &str) -> String {
    let out = virsh(&["pool-info", name]);
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_pool_is_defined_started_and_named_in_the_register() {
    let _serial = SERIAL.lock().await;
    let c = Cleanup::default();
    let uuid = uuid::Uuid::new_v4().to_string();
    let dir = Path::new("/var/lib/libvirt/images").join(unique("local"));
    c.pool(&uuid);
    c.path(&dir);
    assert!(!dir.exists());

    assert_eq!(registered_local_pool(&uuid, &dir).await, uuid);
    let info = pool_info(&uuid);
    assert!(info.contains("running"), "{info}");
    assert!(
        info.lines()
            .any(|l| l.starts_with("Autostart:") && l.ends_with("yes")),
        "{info}"
    );
    assert!(dir.is_dir(), "the pool's directory was not made");

    // A second start finds its own pool: same name, still one pool.
    assert_eq!(registered_local_pool(&uuid, &dir).await, uuid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_already_at_local_path_is_adopted_under_its_own_name() {
    let _serial = SERIAL.lock().await;
    let c = Cleanup::default();
    let existing = unique("pool");
    let dir = Path::new("/var/lib/libvirt/images").join(&existing);
    dir_pool(&c, &existing, &dir);
    let uuid = uuid::Uuid::new_v4().to_string();
    c.pool(&uuid);

    assert_eq!(registered_local_pool(&uuid, &dir).await, existing);
    let info = pool_info(&uuid);
    assert!(
        !info.contains("running"),
        "a second pool was defined: {info}"
    );
}
