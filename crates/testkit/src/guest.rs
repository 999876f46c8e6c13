//! Real Linux guests for end-to-end tests: the kernel and busybox initramfs
//! of scripts/guest-image.sh booted by direct kernel boot under TCG (domain
//! type qemu: nested KVM guests do not progress on the CI machines), specs
//! for them, and a Drop guard removing every domain, link, pool and file a
//! test made. Every object is named cstest-gb-*.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use csagent_proto::v1 as pb;

pub const URI: &str = "qemu:///system";
/// What the guest's /init prints on its serial console once it runs.
pub const MARKER: &str = "CSAGENT-GUEST-UP";

pub fn unique(tag: &str) -> String {
    format!("cstest-gb-{tag}-{:08x}", rand::random::<u32>())
}

/// Kernel and initramfs of the test guest.
#[derive(Clone, Debug)]
pub struct GuestImage {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

/// Builds (or finds in its cache) the test guest; scripts/test.sh has
/// normally built it already, so this is a quick stamp check.
pub fn guest_image() -> GuestImage {
    let out = Command::new("bash")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../scripts/guest-image.sh"
        ))
        .output()
        .expect("run scripts/guest-image.sh");
    assert!(
        out.status.success(),
        "scripts/guest-image.sh failed (needs busybox-static, cpio and Debian's apt sources): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let dir = PathBuf::from(stdout.lines().last().expect("guest dir").trim());
    GuestImage {
        kernel: dir.join("vmlinuz"),
        initrd: dir.join("initramfs.cpio.gz"),
    }
}

/// A random locally administered MAC (52:54:00 is QEMU's prefix).
pub fn random_mac() -> String {
    let b: [u8; 3] = rand::random();
    format!("52:54:00:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2])
}

/// A tiny TCG guest booting `img` directly, diskless and NIC-less; the
/// caller adds disks, NICs and a console log.
pub fn guest_spec(uuid: &uuid::Uuid, name: &str, img: &GuestImage, mem_mib: u64) -> pb::VmSpec {
    pb::VmSpec {
        domain_type: "qemu".into(),
        name: name.into(),
        uuid: uuid.to_string(),
        ids: Some(pb::VmCloudIds {
            instance_id: name.into(),
            ..Default::default()
        }),
        memory: Some(pb::VmMemory {
            size_kib: mem_mib * 1024,
            ..Default::default()
        }),
        cpu: Some(pb::VmCpu {
            vcpus: 1,
            ..Default::default()
        }),
        boot: Some(pb::VmBoot {
            arch: "x86_64".into(),
            machine: "pc".into(),
            kernel: img.kernel.to_string_lossy().into_owned(),
            initrd: img.initrd.to_string_lossy().into_owned(),
            cmdline: "console=ttyS0 quiet".into(),
            ..Default::default()
        }),
        features: Some(pb::VmFeatures {
            acpi: true,
            ..Default::default()
        }),
        serial_console: true,
        ..Default::default()
    }
}

/// Removes, on drop, everything a test registered, in the order that works:
/// domains, then links, then pools, then files.
#[derive(Default)]
pub struct Cleanup {
    domains: Mutex<Vec<(uuid::Uuid, String)>>,
    links: Mutex<Vec<String>>,
    pools: Mutex<Vec<String>>,
    paths: Mutex<Vec<PathBuf>>,
}

impl Cleanup {
    /// A domain by UUID, and its name for libvirt's per-domain log.
    pub fn domain(&self, u: uuid::Uuid, name: &str) {
        self.domains.lock().unwrap().push((u, name.into()));
    }
    pub fn link(&self, name: &str) {
        self.links.lock().unwrap().push(name.into());
    }
    pub fn pool(&self, name: &str) {
        self.pools.lock().unwrap().push(name.into());
    }
    pub fn path(&self, p: &Path) {
        self.paths.lock().unwrap().push(p.into());
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let domains = self.domains.lock().unwrap().clone();
        remove_domains(&domains);
        // A test that failed while StartVm commands were in flight: the
        // agent's libvirt thread may still define one after the first pass.
        if domains.iter().any(|(u, _)| domain_exists(u)) || std::thread::panicking() {
            std::thread::sleep(Duration::from_secs(2));
            remove_domains(&domains);
        }
        for (_, name) in &domains {
            let _ = std::fs::remove_file(format!("/var/log/libvirt/qemu/{name}.log"));
        }
        // Links in reverse: a VLAN sub-interface goes before its parent.
        for l in self.links.lock().unwrap().iter().rev() {
            if Path::new("/sys/class/net").join(l).exists() {
                let _ = Command::new("ip").args(["link", "del", l]).output();
            }
        }
        for p in self.pools.lock().unwrap().iter() {
            let _ = virsh(&["pool-destroy", p]);
            let _ = virsh(&["pool-undefine", p]);
        }
        for p in self.paths.lock().unwrap().iter() {
            let _ = if p.is_dir() {
                std::fs::remove_dir_all(p)
            } else {
                std::fs::remove_file(p)
            };
        }
    }
}

fn remove_domains(domains: &[(uuid::Uuid, String)]) {
    for (u, _) in domains {
        let u = u.to_string();
        let _ = virsh(&["destroy", &u]);
        let _ = virsh(&["undefine", &u, "--nvram"]);
    }
}

pub fn virsh(args: &[&str]) -> std::process::Output {
    Command::new("virsh")
        .args(["-c", URI])
        .args(args)
        .output()
        .expect("run virsh")
}

pub fn domain_exists(u: &uuid::Uuid) -> bool {
    virsh(&["dominfo", &u.to_string()]).status.success()
}

pub fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// A running libvirt dir pool `name` at `dir` (under libvirt's images
/// directory, which QEMU may traverse), registered for cleanup.
pub fn dir_pool(c: &Cleanup, name: &str, dir: &Path) {
    c.path(dir);
    c.pool(name);
    std::fs::create_dir_all(dir).unwrap();
    let d = dir.to_str().unwrap();
    for args in [
        &["pool-define-as", name, "dir", "--target", d][..],
        &["pool-start", name][..],
    ] {
        let out = virsh(args);
        assert!(
            out.status.success(),
            "virsh {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A veth pair `name` / `{name}p`, up: the underlay device of a test
/// VXLAN network (this kernel has neither dummy nor 8021q links).
pub fn veth_pair(c: &Cleanup, name: &str) {
    c.link(name);
    let peer = format!("{name}p");
    for args in [
        &["link", "add", name, "type", "veth", "peer", "name", &peer][..],
        &["link", "set", name, "up"][..],
        &["link", "set", &peer, "up"][..],
    ] {
        let out = Command::new("ip").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Host tap devices of a running domain, with their MACs, from libvirt.
pub fn taps(u: &uuid::Uuid) -> Vec<(String, String)> {
    let out = virsh(&["domiflist", &u.to_string()]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(2)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 5).then(|| (f[0].to_string(), f[4].to_string()))
        })
        .collect()
}

/// The bridge a link is enslaved to (/sys/class/net/<link>/master).
pub fn master_of(link: &str) -> Option<String> {
    std::fs::read_link(Path::new("/sys/class/net").join(link).join("master"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
}

/// Waits until `path` contains `needle`; returns the file's text.
pub async fn wait_contains(path: &Path, needle: &str, limit: Duration) -> Result<String, String> {
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return Ok(text);
        }
        if start.elapsed() > limit {
            return Err(text);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Guest boot tests of one binary run one at a time: TCG guests booting in
/// parallel on a 2-core machine starve each other past any sane limit.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Sends `body` through the plane; the events it caused and its result.
pub async fn updates(
    plane: &csagent_mgmt::Plane,
    host: &uuid::Uuid,
    body: pb::command::Body,
    limit: Duration,
) -> (Vec<pb::Event>, pb::CommandResult) {
    let (_, mut rx) = plane
        .registry
        .send(&host.to_string(), super::cmd("", 0, body));
    let mut events = Vec::new();
    let r = tokio::time::timeout(limit, async {
        while let Some(u) = rx.recv().await {
            match u.update {
                Some(pb::command_update::Update::Event(e)) => events.push(e),
                Some(pb::command_update::Update::Result(r)) => return r,
                _ => {}
            }
        }
        panic!("update stream ended without a result");
    })
    .await
    .expect("no result in time");
    (events, r)
}
