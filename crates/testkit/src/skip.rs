//! Skips that show. libtest has no "skipped" outcome and swallows a passing
//! test's output, so a test that cannot run here would look like a pass.
//! `skip!` prints the reason and, when `CSAGENT_SKIP_FILE` names a file,
//! appends `<test>\t<reason>` to it; scripts/test.sh lists those lines and
//! counts them as skipped, not passed. The test must return right after.

use std::io::Write;

/// The env var naming the file skips are appended to.
pub const SKIP_FILE: &str = "CSAGENT_SKIP_FILE";

/// Records that `test` did not run its checks, and why. Tests call it
/// through [`skip!`](crate::skip), which names the test for them.
pub fn skip(test: &str, reason: &str) {
    let file = std::env::var_os(SKIP_FILE).map(std::path::PathBuf::from);
    skip_to(file.as_deref(), test, reason);
}

/// [`skip()`] with the file given rather than read from the environment.
pub fn skip_to(file: Option<&std::path::Path>, test: &str, reason: &str) {
    // One line per skip, whatever the reason holds.
    let reason = reason.replace(['\t', '\n', '\r'], " ");
    println!("SKIPPED {test}: {reason}");
    eprintln!("SKIPPED {test}: {reason}");
    let Some(path) = file else {
        return;
    };
    // O_APPEND and one write(2) per line: tests on other threads (or other
    // test binaries) appending at once never interleave within a line.
    let line = format!("{test}\t{reason}\n");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot open {SKIP_FILE}={}: {e}", path.display()));
    let n = f
        .write(line.as_bytes())
        .unwrap_or_else(|e| panic!("cannot append to {}: {e}", path.display()));
    assert_eq!(n, line.len(), "short append to {}", path.display());
}

/// The path of the function it is expanded in, as libtest names the test
/// (`host_system::kvm_device_modes_against_user_groups`): the test binary's
/// crate name and any async-closure segments are dropped.
pub fn test_name(type_name: &str) -> String {
    let name = type_name.strip_suffix("::here").unwrap_or(type_name);
    let parts: Vec<&str> = name.split("::").filter(|p| !p.starts_with("{{")).collect();
    match parts.split_first() {
        Some((_crate, rest)) if !rest.is_empty() => rest.join("::"),
        _ => parts.join("::"),
    }
}

/// `skip!("no /dev/kvm here")` or `skip!("kernel lacks 8021q ({e})")`:
/// reports the enclosing test as skipped (see [`skip()`](crate::skip::skip)).
/// Follow it with `return`.
#[macro_export]
macro_rules! skip {
    ($($reason:tt)+) => {{
        fn here() {}
        $crate::skip::skip(
            &$crate::skip::test_name(::std::any::type_name_of_val(&here)),
            &format!($($reason)+),
        )
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_enclosing_test() {
        let name = test_name(std::any::type_name_of_val(&names_the_enclosing_test));
        assert_eq!(name, "skip::tests::names_the_enclosing_test");
        assert_eq!(
            test_name("e2e::storage_volumes::cancel::{{closure}}::here"),
            "storage_volumes::cancel"
        );
    }

    #[test]
    fn appends_one_line_per_skip_from_many_threads() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("skips");
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let file = file.clone();
                std::thread::spawn(move || {
                    skip_to(Some(&file), &format!("t{i}"), "no\tthing\nhere")
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let mut lines: Vec<&str> = text.lines().collect();
        lines.sort();
        let want: Vec<String> = (0..8).map(|i| format!("t{i}\tno thing here")).collect();
        assert_eq!(lines, want);
    }
}
