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
