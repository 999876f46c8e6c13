//! `[guest]` host defaults reach the domain libvirt defines: a real QEMU
//! guest (TCG) started through the plane by an agent whose config sets the
//! CPU, a random-number device, a watchdog, the balloon's statistics period
//! and full clones, from a spec that says none of it.

use std::path::Path;
use std::time::Duration;

use csagent_proto::v1 as pb;
use csagent_testkit::guest::*;
use csagent_testkit::storage::info_json;
use csagent_testkit::*;

const LIMIT: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_defaults_fill_what_the_spec_leaves_unsaid() {
    let _serial = SERIAL.lock().await;
    let c = Cleanup::default();
    let img = guest_image();
    let pool = unique("pool");
    let dir = Path::new("/var/lib/libvirt/images").join(&pool);
    dir_pool(&c, &pool, &dir);
    let template = "cstest-gd-tpl.qcow2";
    let out = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(dir.join(template))
        .arg("16M")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");

    let f = Fixture::new(fast_liveness()).await;
    let mut cfg = f.config();
    cfg.hypervisor.uri = URI.into();
    cfg.host.capacity.reserved_memory_mib = 0;
    let g = &mut cfg.guest;
    (g.cpu_mode, g.cpu_model) = ("custom".into(), "qemu64".into());
    g.cpu_features = vec!["sse2".into()];
    g.rng_enable = true;
    (g.watchdog_model, g.watchdog_action) = ("i6300esb".into(), "reset".into());
    g.memballoon_stats_period_secs = 7;
    g.create_full_clone = true;
    let agent = run_in_process(cfg);
    f.wait_up(String::new).await;

    let uuid = uuid::Uuid::new_v4();
    let name = unique("gd");
    c.domain(uuid, &name);
    let mut spec = guest_spec(&uuid, &name, &img, 128);
    spec.disks = vec![pb::VmDisk {
        source_type: "file".into(),
        target: "vda".into(),
        bus: "virtio".into(),
        ..Default::default()
    }];
    // A balloon whose period the spec leaves unset.
    spec.balloon = Some(pb::VmBalloon::default());
    let root = format!("{name}-root.qcow2");
    let m = pb::StartVm {
        spec: Some(spec),
        volumes: vec![pb::PrepareVolume {
            volume: Some(pb::CreateVolumeFromTemplate {
                pool: pool.clone(),
                name: root.clone(),
                template: template.into(),
                // No clone mode: the host's create_full_clone decides.
                ..Default::default()
            }),
            disk_target: "vda".into(),
        }],
        networks: vec![],
    };
    let (_, r) = updates(&f.plane, &f.host, pb::command::Body::StartVm(m), LIMIT).await;
    assert_eq!(r.status, pb::CommandStatus::Ok as i32, "{r:?}");

    let out = virsh(&["dumpxml", &uuid.to_string()]);
    let xml = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    for want in [
        "<cpu mode='custom'",
        ">qemu64</model>",
        "<feature policy='require' name='sse2'/>",
        "<rng model='virtio'>",
        "<backend model='random'>/dev/urandom</backend>",
        "<watchdog model='i6300esb' action='reset'>",
        "<stats period='7'/>",
    ] {
        assert!(
            xml.contains(want),
            "{want} missing from the defined domain:\n{xml}"
        );
    }
    // A full copy: the volume has no backing file.
    let info = info_json(&dir.join(&root));
    assert_eq!(info["format"], "qcow2", "{info}");
    assert!(
        info.get("backing-filename").is_none(),
        "a linked clone: {info}"
    );

    let destroy = pb::command::Body::DestroyVm(pb::DestroyVm {
        vm_uuid: uuid.to_string(),
    });
    let (_, r) = updates(&f.plane, &f.host, destroy, LIMIT).await;
    assert_eq!(r.status, pb::CommandStatus::Ok as i32, "{r:?}");
    agent.stop().await;
}
