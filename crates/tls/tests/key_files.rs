//! Key and certificate files on a real filesystem: `pki::write_file` never
//! writes through a planted symlink or a leftover temporary file, the file
//! ends with the mode asked for, and a failed write leaves the old file
//! and no temporary file behind.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use csagent_tls::pki::write_file;

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().mode() & 0o777
}

fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect()
}

#[test]
fn a_planted_symlink_at_the_old_temporary_name_is_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, b"untouched").unwrap();
    let key = dir.path().join("agent.key");
    std::os::unix::fs::symlink(&victim, dir.path().join("agent.key.tmp")).unwrap();
    write_file(&key, b"secret", 0o600).unwrap();
    assert_eq!(std::fs::read(&victim).unwrap(), b"untouched");
    assert_eq!(std::fs::read(&key).unwrap(), b"secret");
    assert_eq!(mode(&key), 0o600);
}

#[test]
fn a_world_readable_leftover_does_not_loosen_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("agent.key");
    let old_tmp = dir.path().join("agent.key.tmp");
    std::fs::write(&old_tmp, b"old").unwrap();
    std::fs::set_permissions(&old_tmp, std::fs::Permissions::from_mode(0o666)).unwrap();
    std::fs::write(&key, b"old key").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    write_file(&key, b"new key", 0o600).unwrap();
    assert_eq!(mode(&key), 0o600, "the key took a looser mode");
    assert_eq!(std::fs::read(&key).unwrap(), b"new key");
    // Only the leftover of someone else remains; ours is gone.
    assert_eq!(leftovers(dir.path()), vec!["agent.key.tmp".to_string()]);
}

#[test]
fn a_failed_write_keeps_the_old_file_and_leaves_no_temporary_file() {
    let dir = tempfile::tempdir().unwrap();
    // The target is a non-empty directory: rename over it fails.
    let target = dir.path().join("ca.pem");
    std::fs::create_dir(&target).unwrap();
    std::fs::write(target.join("keep"), b"x").unwrap();
    let e = write_file(&target, b"bundle", 0o644).unwrap_err();
    assert!(e.to_string().contains("ca.pem"), "{e}");
    assert!(target.join("keep").exists());
    assert!(
        leftovers(dir.path()).is_empty(),
        "{:?}",
        leftovers(dir.path())
    );
}
