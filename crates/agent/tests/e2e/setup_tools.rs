//! scripts/verify-tools.sh, which `make test`, `make demo` and install-deps
//! run first: a command lost from PATH is named with its Debian package.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Where `cmd` is on this process's PATH, as `command -v` would say.
fn which(cmd: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(cmd))
            .find(|f| f.is_file())
    })
}

/// A PATH of symlinks to every tool the list names but `qemu-img` (and to
/// `dirname`, which the script itself runs): the script fails, naming
/// qemu-img and qemu-utils, and only it from that package.
#[test]
fn verify_tools_names_a_missing_qemu_img_and_its_package() {
    let list = std::fs::read_to_string(repo().join("scripts/tools.txt")).unwrap();
    let bin = tempfile::tempdir().unwrap();
    let tools = list
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_whitespace().next());
    for cmd in tools.chain(["dirname"]).filter(|c| *c != "qemu-img") {
        if let Some(real) = which(cmd) {
            std::os::unix::fs::symlink(real, bin.path().join(cmd)).unwrap();
        }
    }
    assert!(bin.path().join("qemu-io").exists(), "no qemu-io to keep");
    let out = Command::new("/bin/bash")
        .arg(repo().join("scripts/verify-tools.sh"))
        .env("PATH", bin.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "passed without qemu-img: {err}");
    assert!(
        err.contains("missing command 'qemu-img' (Debian package: qemu-utils)"),
        "{err}"
    );
    assert!(!err.contains("'qemu-io'"), "{err}");
    assert!(err.contains("run: bash scripts/install-deps.sh"), "{err}");
}

fn run(cmd: &str, args: &[&str]) -> std::process::Output {
    Command::new(cmd).args(args).output().unwrap()
}

fn domain_xml(name: &str) -> String {
    format!(
        "<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory>\
         <os><type arch='x86_64'>hvm</type></os></domain>"
    )
}

/// Removes both prefixes' domains, pools and links however the test ends.
struct Unplant(Vec<String>);

impl Drop for Unplant {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = run(
                "virsh",
                &["-c", "qemu:///system", "undefine", &format!("{p}dom")],
            );
            let _ = run(
                "virsh",
                &["-c", "qemu:///system", "pool-undefine", &format!("{p}pool")],
            );
            let _ = run("ip", &["link", "del", &format!("{p}l")]);
        }
    }
}

/// Plants, under a prefix of its own, what a crashed run leaves (a domain,
/// a pool, a link, a file) beside the same under another prefix, runs
/// scripts/sweep.sh narrowed to the first prefix: only those are gone.
#[test]
fn sweep_removes_only_leftovers_with_its_prefixes() {
    if run("virsh", &["-c", "qemu:///system", "uri"]).status.code() != Some(0) {
        csagent_testkit::skip!("the system libvirtd does not answer");
        return;
    }
    let tag = format!("{:04x}", rand::random::<u16>());
    let (gone, kept) = (format!("csw{tag}-"), format!("csk{tag}-"));
    let tmp = tempfile::tempdir().unwrap();
    let _unplant = Unplant(vec![gone.clone(), kept.clone()]);
    let plant = |p: &str| {
        let xml = tmp.path().join(format!("{p}dom.xml"));
        std::fs::write(&xml, domain_xml(&format!("{p}dom"))).unwrap();
        assert!(run(
            "virsh",
            &["-c", "qemu:///system", "define", xml.to_str().unwrap()]
        )
        .status
        .success());
        let pool_dir = tmp.path().join(format!("{p}pooldir"));
        std::fs::create_dir(&pool_dir).unwrap();
        let pool = format!("{p}pool");
        let out = run(
            "virsh",
            &[
                "-c",
                "qemu:///system",
                "pool-define-as",
                &pool,
                "dir",
                "--target",
                pool_dir.to_str().unwrap(),
            ],
        );
        assert!(out.status.success(), "{out:?}");
        let out = run("ip", &["link", "add", &format!("{p}l"), "type", "bridge"]);
        assert!(out.status.success(), "{out:?}");
        std::fs::write(tmp.path().join(format!("{p}file")), b"x").unwrap();
    };
    plant(&gone);
    plant(&kept);
    let out = Command::new("bash")
        .arg(repo().join("scripts/sweep.sh"))
        .env("CSAGENT_SWEEP_PREFIXES", &gone)
        .env("CSAGENT_SWEEP_IMAGES", tmp.path().join("no-images"))
        .env("TMPDIR", tmp.path())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    let exists = |p: &str| {
        let dom = run(
            "virsh",
            &["-c", "qemu:///system", "dominfo", &format!("{p}dom")],
        )
        .status
        .success();
        let pool = run(
            "virsh",
            &["-c", "qemu:///system", "pool-info", &format!("{p}pool")],
        )
        .status
        .success();
        let link = Path::new("/sys/class/net").join(format!("{p}l")).exists();
        let file = tmp.path().join(format!("{p}file")).exists();
        [dom, pool, link, file]
    };
    let (after_gone, after_kept) = (exists(&gone), exists(&kept));
    // The other prefix's objects go now, whatever the assertions say.
    let _ = run(
        "virsh",
        &["-c", "qemu:///system", "undefine", &format!("{kept}dom")],
    );
    let _ = run(
        "virsh",
        &[
            "-c",
            "qemu:///system",
            "pool-undefine",
            &format!("{kept}pool"),
        ],
    );
    let _ = run("ip", &["link", "del", &format!("{kept}l")]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        after_gone, [false; 4],
        "domain, pool, link, file left: {said}"
    );
    assert_eq!(
        after_kept, [true; 4],
        "another prefix's objects were touched"
    );
    // Domain, pool, link, and three files (the file, the pool's directory, the XML).
    assert!(said.contains("removed 6"), "{said}");
}
