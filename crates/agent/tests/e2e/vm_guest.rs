//! "Running" means running: real Linux guests (Debian's cloud kernel and a
//! busybox initramfs from scripts/guest-image.sh) started through the plane
//! on qemu:///system, booting from a volume StartVm made from a template,
//! with their NIC on a bridge StartVm ensured; ten at once; failures that
//! leave nothing behind; and the whole lifecycle through the csagent-mgmt
//! binary. Guests run under TCG (domain type qemu): on the CI machines a
//! nested KVM guest does not progress.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use csagent_network::{IfName, NetworkSpec, Vni, VxlanFlood};
use csagent_proto::v1 as pb;
use csagent_testkit::guest::*;
use csagent_testkit::*;

const BOOT_LIMIT: Duration = Duration::from_secs(90);
/// Ten StartVm queue on the agent's one libvirt connection thread.
const TEN_LIMIT: Duration = Duration::from_secs(150);

fn say_tcg(test: &str) {
    println!("{test}: guests run under TCG (domain type qemu); nested KVM guests do not progress on this machine");
}

/// A plane and an in-process agent on qemu:///system, sized so ten tiny
/// guests pass admission on a 2-core CI machine.
async fn qemu_agent() -> (Fixture, InProcessAgent) {
    let f = Fixture::new(fast_liveness()).await;
    let mut cfg = f.config();
    cfg.hypervisor.uri = URI.into();
    cfg.host.capacity.reserved_memory_mib = 0;
    cfg.host.capacity.cpu_overcommit = 16.0;
    cfg.agent.workers = 12;
    // Every libvirt call of the agent goes through one connection thread:
    // ten TCG guests defined at once on a loaded 2-core machine queue there
    // longer than the 10 s production default.
    cfg.hypervisor.call_timeout_ms = 60_000;
    let agent = run_in_process(cfg);
    f.wait_up(String::new).await;
    (f, agent)
}

/// A dir pool with a 32 MiB qcow2 template, a veth underlay for a VXLAN
/// network, and the names of what StartVm will make from them.
struct Env {
    pool: String,
    dir: PathBuf,
    template: String,
    dev: String,
    vni: u32,
    bridge: String,
}

/// Unicast flooding to a documentation address: nothing leaves the host.
const PEER: &str = "192.0.2.1";

fn vxlan(dev: &str, vni: u32) -> NetworkSpec {
    NetworkSpec::Vxlan {
        vni: Vni::new(vni).unwrap(),
        underlay: IfName::new(dev).unwrap(),
        flood: VxlanFlood::Peers(vec![PEER.parse().unwrap()]),
        mtu: None,
    }
}

fn env(c: &Cleanup) -> Env {
    let pool = unique("pool");
    let dir = Path::new("/var/lib/libvirt/images").join(&pool);
    dir_pool(c, &pool, &dir);
    let template = "cstest-gb-tpl.qcow2".to_string();
    let out = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(dir.join(&template))
        .arg("32M")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let dev = format!("cstest-gb-{:04x}", rand::random::<u16>());
    veth_pair(c, &dev);
    // High VNIs: other tests of this project use small ones.
    let vni = 16_000_000 + u32::from(rand::random::<u16>());
    let bridge = vxlan(&dev, vni).bridge_name().to_string();
    // Registered after the underlay: cleanup removes links in reverse order.
    c.link(csagent_network::names::vxlan_dev_name(Vni::new(vni).unwrap()).as_str());
    c.link(&bridge);
    Env {
        pool,
        dir,
        template,
        dev,
        vni,
        bridge,
    }
}

fn prepare_volume(e: &Env, name: &str, template: &str) -> pb::PrepareVolume {
    pb::PrepareVolume {
        volume: Some(pb::CreateVolumeFromTemplate {
            pool: e.pool.clone(),
            name: name.into(),
            template: template.into(),
            mode: pb::CloneMode::Linked as i32,
            ..Default::default()
        }),
        disk_target: "vda".into(),
    }
}

fn prepare_network(mac: &str, dev: &str, vni: u32) -> pb::PrepareNetwork {
    pb::PrepareNetwork {
        mac: mac.into(),
        network: Some(pb::prepare_network::Network::Vxlan(pb::VxlanNetwork {
            vni,
            underlay_device: dev.into(),
            peers: vec![PEER.into()],
            ..Default::default()
        })),
    }
}

/// A guest with a root disk (vda, filled in by preparation), one virtio NIC
/// and VNC.
fn guest_with_disk_and_nic(
    uuid: &uuid::Uuid,
    name: &str,
    img: &GuestImage,
    mac: &str,
) -> pb::VmSpec {
    let mut s = guest_spec(uuid, name, img, 128);
    s.disks = vec![pb::VmDisk {
        source_type: "file".into(),
        target: "vda".into(),
        bus: "virtio".into(),
        ..Default::default()
    }];
    s.interfaces = vec![pb::VmInterface {
        mac: mac.into(),
        model: "virtio".into(),
        ..Default::default()
    }];
    s.graphics = vec![pb::VmGraphics {
        r#type: "vnc".into(),
        autoport: true,
        listen: "127.0.0.1".into(),
        ..Default::default()
    }];
    s
}

fn start_body(m: pb::StartVm) -> pb::command::Body {
    pb::command::Body::StartVm(m)
}

fn ok(r: &pb::CommandResult) {
    assert_eq!(r.status, pb::CommandStatus::Ok as i32, "{r:?}");
}

fn started(r: &pb::CommandResult) -> pb::StartVmResult {
    ok(r);
    match &r.result {
        Some(pb::command_result::Result::StartVm(s)) => s.clone(),
        other => panic!("not a StartVm result: {other:?}"),
    }
}

fn states(events: &[pb::Event]) -> Vec<i32> {
    events.iter().map(|e| e.state).collect()
}

fn stop_body(uuid: &uuid::Uuid, force: bool, timeout_ms: u32) -> pb::command::Body {
    pb::command::Body::StopVm(pb::StopVm {
        vm_uuid: uuid.to_string(),
        force,
        timeout_ms,
    })
}

fn destroy_body(uuid: &uuid::Uuid) -> pb::command::Body {
    pb::command::Body::DestroyVm(pb::DestroyVm {
        vm_uuid: uuid.to_string(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_guest_boots_from_a_template_volume_on_an_ensured_bridge() {
    say_tcg("real_guest_boots_from_a_template_volume_on_an_ensured_bridge");
    let _serial = SERIAL.lock().await;
    let c = Cleanup::default();
    let img = guest_image();
    let e = env(&c);
    let (f, agent) = qemu_agent().await;
    let (plane, host) = (&f.plane, f.host);

    let uuid = uuid::Uuid::new_v4();
    let name = unique("vm");
    c.domain(uuid, &name);
    let log = PathBuf::from(format!("/var/log/libvirt/qemu/{name}-console.log"));
    c.path(&log);
    let mac = random_mac();
    let mut spec = guest_with_disk_and_nic(&uuid, &name, &img, &mac);
    spec.serial_console_log = log.to_string_lossy().into_owned();
    let root = format!("{name}-root.qcow2");
    let msg = pb::StartVm {
        spec: Some(spec),
        volumes: vec![prepare_volume(&e, &root, &e.template)],
        networks: vec![prepare_network(&mac, &e.dev, e.vni)],
    };

    let sent = Instant::now();
    let (events, r) = updates(plane, &host, start_body(msg.clone()), BOOT_LIMIT).await;
    let res = started(&r);
    let running = pb::VmPowerState::Running as i32;
    assert_eq!(
        states(&events),
        vec![pb::VmPowerState::Starting as i32, running]
    );
    assert_eq!(res.vm.as_ref().unwrap().state, running);
    assert_eq!(res.bridges, vec![e.bridge.clone()]);
    let vol = e.dir.join(&root);
    assert_eq!(res.volume_paths, vec![vol.to_string_lossy().into_owned()]);
    assert_eq!(res.created_volumes, res.volume_paths);
    assert!(res.vnc_port >= 5900, "{res:?}");

    // The guest runs: its init printed the marker, the disk and the NIC.
    let console = wait_contains(&log, MARKER, BOOT_LIMIT)
        .await
        .unwrap_or_else(|t| panic!("no {MARKER} on the console in {BOOT_LIMIT:?}:\n{t}"));
    println!(
        "guest console showed {MARKER} {:?} after StartVm was sent",
        sent.elapsed()
    );
    // The NIC line is the last one init prints.
    let nic_line = format!("CSAGENT-NIC: eth0 {mac}");
    let console = wait_contains(&log, &nic_line, Duration::from_secs(30))
        .await
        .unwrap_or_else(|t| panic!("guest's eth0 does not have MAC {mac}:\n{console}{t}"));
    let disks = console
        .lines()
        .find(|l| l.starts_with("CSAGENT-DISKS:"))
        .unwrap_or_default();
    assert!(disks.contains("vda"), "guest sees no vda: {console}");

    // Its root disk is a linked clone of the template.
    let info = std::process::Command::new("qemu-img")
        .args(["info", "-U", "--output=json"])
        .arg(&vol)
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert!(
        info["backing-filename"]
            .as_str()
            .unwrap_or_default()
            .ends_with(&e.template),
        "{info}"
    );

    // Its tap is enslaved to the bridge StartVm ensured, with the spec's MAC.
    let taps = taps(&uuid);
    assert_eq!(taps.len(), 1, "{taps:?}");
    let (tap, tap_mac) = &taps[0];
    assert_eq!(tap_mac, &mac);
    assert_eq!(master_of(tap).as_deref(), Some(e.bridge.as_str()));

    // The same StartVm again: success, the volume is reused, not re-made.
    let (_, r) = updates(plane, &host, start_body(msg), BOOT_LIMIT).await;
    let again = started(&r);
    assert!(again.created_volumes.is_empty(), "{again:?}");
    assert_eq!(again.volume_paths, res.volume_paths);

    // Graceful stop: the guest's acpid powers it off.
    let (events, r) = updates(plane, &host, stop_body(&uuid, false, 60_000), BOOT_LIMIT).await;
    ok(&r);
    assert_eq!(
        states(&events).last(),
        Some(&(pb::VmPowerState::Stopped as i32))
    );
    let console = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(console.contains("CSAGENT-GUEST-POWEROFF"), "{console}");

    // Destroy: the domain goes, and with its last user the bridge.
    let (_, r) = updates(plane, &host, destroy_body(&uuid), BOOT_LIMIT).await;
    ok(&r);
    assert!(!domain_exists(&uuid));
    assert!(
        !link_exists(&e.bridge),
        "bridge {} outlived its only VM",
        e.bridge
    );
    let del = pb::command::Body::DeleteVolume(pb::DeleteVolume {
        pool: e.pool.clone(),
        name: root,
    });
    let (_, r) = updates(plane, &host, del, BOOT_LIMIT).await;
    ok(&r);
    assert!(!vol.exists());
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_guests_start_concurrently() {
    say_tcg("ten_guests_start_concurrently");
    let _serial = SERIAL.lock().await;
    let c = Cleanup::default();
    let img = guest_image();
    let (f, agent) = qemu_agent().await;
    let (plane, host) = (&f.plane, f.host);
    // Running is what is asserted here, not the boot (the first test proves
    // that): diskless guests without a kernel idle in the firmware, so ten
    // TCG guests do not starve a 2-core machine.
    let vms: Vec<(uuid::Uuid, pb::VmSpec)> = (0..10)
        .map(|_| {
            let u = uuid::Uuid::new_v4();
            let name = unique("ten");
            c.domain(u, &name);
            let mut s = guest_spec(&u, &name, &img, 64);
            s.boot = None;
            (u, s)
        })
        .collect();

    let t = Instant::now();
    let starts = vms.iter().map(|(_, s)| {
        let m = pb::StartVm {
            spec: Some(s.clone()),
            ..Default::default()
        };
        updates(plane, &host, start_body(m), TEN_LIMIT)
    });
    let results = futures::future::join_all(starts).await;
    println!("10 concurrent StartVm (TCG) done in {:?}", t.elapsed());
    let running = pb::VmPowerState::Running as i32;
    for (events, r) in &results {
        let res = started(r);
        assert_eq!(res.vm.unwrap().state, running);
        assert_eq!(states(events).last(), Some(&running));
    }
    let list = call(
        plane,
        &host,
        cmd("", 0, pb::command::Body::ListVms(pb::ListVms::default())),
        Duration::from_secs(10),
    )
    .await;
    let Some(pb::command_result::Result::VmList(l)) = list.result else {
        panic!("{list:?}")
    };
    for (u, _) in &vms {
        let vm = l.vms.iter().find(|v| v.vm_uuid == u.to_string());
        assert_eq!(
            vm.map(|v| v.state),
            Some(running),
            "{u} not reported Running"
        );
    }
    let destroys = vms
        .iter()
        .map(|(u, _)| updates(plane, &host, destroy_body(u), BOOT_LIMIT));
    for (_, r) in futures::future::join_all(destroys).await {
        ok(&r);
    }
    for (u, _) in &vms {
        assert!(!domain_exists(u));
    }
    agent.stop().await;
}

/// Asserts a failed StartVm left no domain, no volume file and no bridge.
fn nothing_left(e: &Env, uuid: &uuid::Uuid, volume: &str) {
    assert!(!domain_exists(uuid), "domain {uuid} left behind");
    assert!(!e.dir.join(volume).exists(), "volume {volume} left behind");
    assert!(!link_exists(&e.bridge), "bridge {} left behind", e.bridge);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_step_is_named_and_undoes_the_steps_before_it() {
    let _serial = SERIAL.lock().await;
    let c = Cleanup::default();
    let img = guest_image();
    let e = env(&c);
    let (f, agent) = qemu_agent().await;
    let (plane, host) = (&f.plane, f.host);
    let attempt =
        |volumes: Option<&str>, networks: Option<&str>, mutate: &dyn Fn(&mut pb::VmSpec)| {
            let uuid = uuid::Uuid::new_v4();
            let name = unique("bad");
            c.domain(uuid, &name);
            let mac = random_mac();
            let mut spec = guest_with_disk_and_nic(&uuid, &name, &img, &mac);
            mutate(&mut spec);
            let nets = match networks {
                Some(dev) => vec![prepare_network(&mac, dev, e.vni)],
                None => vec![],
            };
            let root = format!("{name}-root.qcow2");
            let vols = match volumes {
                Some(tpl) => vec![prepare_volume(&e, &root, tpl)],
                None => vec![],
            };
            let m = pb::StartVm {
                spec: Some(spec),
                volumes: vols,
                networks: nets,
            };
            (uuid, root, m)
        };

    // 1. The template does not exist: prepare-volume fails, nothing is made.
    let (uuid, root, m) = attempt(
        Some("cstest-gb-no-such-template"),
        Some(e.dev.as_str()),
        &|_| {},
    );
    let (_, r) = updates(plane, &host, start_body(m), BOOT_LIMIT).await;
    assert_eq!(r.error_code, pb::ErrorCode::NotFound as i32, "{r:?}");
    let step = format!("prepare-volume {}/{root}:", e.pool);
    assert!(r.message.starts_with(&step), "{}", r.message);
    nothing_left(&e, &uuid, &root);

    // 2. The network cannot be made (no such device): the volume made in
    // the step before is deleted.
    let dev = "cstest-gb-nodev";
    let (uuid, root, m) = attempt(Some(e.template.as_str()), Some(dev), &|_| {});
    let (_, r) = updates(plane, &host, start_body(m), BOOT_LIMIT).await;
    assert_ne!(r.status, pb::CommandStatus::Ok as i32, "{r:?}");
    let bridge = vxlan(dev, e.vni).bridge_name();
    assert!(
        r.message.starts_with(&format!("ensure-network {bridge}:")),
        "{}",
        r.message
    );
    nothing_left(&e, &uuid, &root);
    assert!(!link_exists(bridge.as_str()));

    // 3. libvirt cannot start it (no such kernel): the network and the volume
    // made before are undone.
    let (uuid, root, m) = attempt(Some(e.template.as_str()), Some(e.dev.as_str()), &|s| {
        s.boot.as_mut().unwrap().kernel =
            "/var/lib/libvirt/images/cstest-gb-nonexistent/vmlinuz".into();
    });
    let (_, r) = updates(plane, &host, start_body(m), BOOT_LIMIT).await;
    assert_ne!(r.status, pb::CommandStatus::Ok as i32, "{r:?}");
    assert!(r.message.starts_with("define-and-start:"), "{}", r.message);
    nothing_left(&e, &uuid, &root);
    println!("failure messages name their step, e.g. {:?}", r.message);
    agent.stop().await;
}

/// Runs `csagent-mgmt` with `args`; its updates (from `--json` lines, enum
/// values by name, read back through the plane's names), exit status and
/// whole output.
async fn mgmt(args: &[&str]) -> (Vec<pb::CommandUpdate>, bool, String) {
    let out = tokio::process::Command::new(mgmt_bin())
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let updates = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .map(|v| csagent_mgmt::show::numbered(csagent_mgmt::show::COMMAND_UPDATE, v))
        .filter_map(|v| serde_json::from_value::<pb::CommandUpdate>(v).ok())
        .collect();
    let all = format!("{text}{}", String::from_utf8_lossy(&out.stderr));
    (updates, out.status.success(), all)
}

fn events_of(u: &[pb::CommandUpdate]) -> Vec<i32> {
    u.iter()
        .filter_map(|u| match &u.update {
            Some(pb::command_update::Update::Event(e)) => Some(e.state),
            _ => None,
        })
        .collect()
}

fn result_of_updates(u: &[pb::CommandUpdate]) -> pb::CommandResult {
    u.iter()
        .find_map(|u| match &u.update {
            Some(pb::command_update::Update::Result(r)) => Some(r.clone()),
            _ => None,
        })
        .expect("no result line")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_lifecycle_through_the_csagent_mgmt_binary() {
    say_tcg("full_lifecycle_through_the_csagent_mgmt_binary");
    let _serial = SERIAL.lock().await;
    let c = Cleanup::default();
    let img = guest_image();
    let pki = TestPki::new(&["localhost", "127.0.0.1"]);
    let work = workdir();
    let plane = spawn_plane(&pki, work.path(), "plane", free_port(), &[]);
    assert!(
        wait_port(plane.addr, Duration::from_secs(10)).await,
        "{}",
        plane.proc.log_text()
    );
    let host = uuid::Uuid::new_v4();
    let mut cfg = agent_config(
        &host,
        &pki.agent(&host),
        &[plane.addr.to_string()],
        work.path(),
    );
    cfg.hypervisor.uri = URI.into();
    cfg.host.capacity.reserved_memory_mib = 0;
    // Other tests' guests on this hypervisor count against admission.
    cfg.host.capacity.cpu_overcommit = 16.0;
    let agent = spawn_agent(&cfg, work.path(), "agent");
    let admin = plane.admin.to_str().unwrap().to_string();
    let h = host.to_string();
    let send = |json: String| {
        let (admin, h) = (admin.clone(), h.clone());
        async move {
            mgmt(&[
                "send",
                "--json",
                "--admin-socket",
                &admin,
                "--host",
                &h,
                &json,
            ])
            .await
        }
    };
    let up = Instant::now();
    loop {
        let (_, ok, _) = send(r#"{"noop":{}}"#.into()).await;
        if ok {
            break;
        }
        assert!(
            up.elapsed() < Duration::from_secs(20),
            "agent never came up: {}",
            agent.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let uuid = uuid::Uuid::new_v4();
    let name = unique("cli");
    c.domain(uuid, &name);
    let log = PathBuf::from(format!("/var/log/libvirt/qemu/{name}-console.log"));
    c.path(&log);
    let mut spec = guest_spec(&uuid, &name, &img, 128);
    spec.serial_console_log = log.to_string_lossy().into_owned();
    spec.graphics = vec![pb::VmGraphics {
        r#type: "vnc".into(),
        autoport: true,
        listen: "127.0.0.1".into(),
        ..Default::default()
    }];
    let body = start_body(pb::StartVm {
        spec: Some(spec),
        ..Default::default()
    });
    let (u, ok, out) = send(serde_json::to_string(&body).unwrap()).await;
    assert!(ok, "start_vm failed: {out}");
    assert_eq!(
        events_of(&u),
        vec![
            pb::VmPowerState::Starting as i32,
            pb::VmPowerState::Running as i32
        ],
        "{out}"
    );
    let res = started(&result_of_updates(&u));
    assert!(res.vnc_port >= 5900, "{out}");
    // What a person (or jq) reads: enum values by name.
    assert!(out.contains(r#""state":"RUNNING""#), "{out}");
    assert!(out.contains(r#""status":"OK""#), "{out}");
    wait_contains(&log, MARKER, BOOT_LIMIT)
        .await
        .unwrap_or_else(|t| panic!("no {MARKER} on the console:\n{t}"));

    let state = format!(r#"{{"get_vm_state":{{"vm_uuid":"{uuid}"}}}}"#);
    let (u, ok, out) = send(state.clone()).await;
    assert!(ok, "{out}");
    match result_of_updates(&u).result {
        Some(pb::command_result::Result::VmStatus(s)) => {
            assert_eq!(s.state, pb::VmPowerState::Running as i32)
        }
        other => panic!("{other:?}"),
    }
    let stop = format!(r#"{{"stop_vm":{{"vm_uuid":"{uuid}","timeout_ms":60000}}}}"#);
    let (u, ok, out) = send(stop).await;
    assert!(ok, "graceful stop failed: {out}");
    assert_eq!(
        events_of(&u).last(),
        Some(&(pb::VmPowerState::Stopped as i32)),
        "{out}"
    );
    let (_, ok, out) = send(format!(r#"{{"destroy_vm":{{"vm_uuid":"{uuid}"}}}}"#)).await;
    assert!(ok, "{out}");
    let (u, ok, out) = send(state).await;
    assert!(!ok, "{out}");
    assert_eq!(
        result_of_updates(&u).error_code,
        pb::ErrorCode::NotFound as i32
    );
    assert!(out.contains(r#""error_code":"NOT_FOUND""#), "{out}");
    // Without --json: a line a person reads, no JSON, no numbers for enums.
    let (u, ok, out) = mgmt(&[
        "send",
        "--admin-socket",
        &admin,
        "--host",
        &h,
        &format!(r#"{{"get_vm_state":{{"vm_uuid":"{uuid}"}}}}"#),
    ])
    .await;
    assert!(!ok && u.is_empty(), "{out}");
    assert!(out.contains("result    ERROR NOT_FOUND in "), "{out}");
    assert!(!out.contains("error_code"), "{out}");
    assert!(!domain_exists(&uuid));
}

// StartVm stops itself: dispatch never drops it, so whatever ends it (the
// plane's cancel, its deadline) its undo runs. A linked clone for vda is
// made first, then a full copy of a 1 GiB template for vdb is under way
// when the command ends: the clone is deleted, the partial copy removed,
// no bridge and no domain stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_vm_cancelled_or_out_of_time_mid_prepare_undoes_what_it_made() {
    let _serial = SERIAL.lock().await;
    let c = Cleanup::default();
    let img = guest_image();
    let e = env(&c);
    // Not zeros: qemu-img skips those, and the copy must take a while.
    let big = "cstest-gb-big.raw";
    csagent_testkit::storage::random_file(&e.dir.join(big), 1 << 30, 7);
    let (fx, agent) = qemu_agent().await;
    let (plane, host) = (&fx.plane, fx.host);
    let before = csagent_testkit::storage::list(&e.dir);
    let attempt = || {
        let uuid = uuid::Uuid::new_v4();
        let name = unique("cut");
        c.domain(uuid, &name);
        let mac = random_mac();
        let mut spec = guest_with_disk_and_nic(&uuid, &name, &img, &mac);
        let mut vdb = spec.disks[0].clone();
        vdb.target = "vdb".into();
        spec.disks.push(vdb);
        let mut copy = prepare_volume(&e, &format!("{name}-data.raw"), big);
        copy.disk_target = "vdb".into();
        if let Some(v) = copy.volume.as_mut() {
            v.mode = pb::CloneMode::Full as i32;
            v.format = pb::VolumeFormat::Raw as i32;
        }
        let m = pb::StartVm {
            spec: Some(spec),
            volumes: vec![
                prepare_volume(&e, &format!("{name}-root.qcow2"), &e.template),
                copy,
            ],
            networks: vec![prepare_network(&mac, &e.dev, e.vni)],
        };
        (uuid, m)
    };
    let as_before = |uuid: &uuid::Uuid, what: &str| {
        assert_eq!(
            csagent_testkit::storage::list(&e.dir),
            before,
            "{what}: the pool changed"
        );
        assert!(!domain_exists(uuid), "{what}: a domain stayed");
        assert!(!link_exists(&e.bridge), "{what}: the bridge stayed");
    };

    let (uuid, m) = attempt();
    let (_, mut rx) = plane
        .registry
        .send(&host.to_string(), cmd("cut-cancel", 0, start_body(m)));
    tokio::time::sleep(Duration::from_millis(400)).await;
    plane.registry.cancel(&host.to_string(), "cut-cancel");
    let r = result_of(&mut rx, BOOT_LIMIT).await;
    assert_eq!(r.error_code, pb::ErrorCode::Cancelled as i32, "{r:?}");
    as_before(&uuid, "cancelled");

    let (uuid, m) = attempt();
    let r = call(
        plane,
        &host,
        cmd("cut-deadline", 700, start_body(m)),
        BOOT_LIMIT,
    )
    .await;
    assert_eq!(
        r.error_code,
        pb::ErrorCode::DeadlineExceeded as i32,
        "{r:?}"
    );
    as_before(&uuid, "out of time");
    eprintln!("ended as: {}", r.message);
    agent.stop().await;
}
