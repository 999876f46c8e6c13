//! `csagent domain render|parse`: what an operator runs to see what the agent
//! would define, through the real binary.

use std::process::Command;

fn csagent(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_csagent"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn render_prints_the_golden_xml() {
    let out = csagent(&["domain", "render", "tests/golden/domain/minimal.json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want = std::fs::read_to_string("tests/golden/domain/minimal.xml").unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim_end(),
        want.trim_end()
    );
}

#[test]
fn render_names_a_misspelled_or_invalid_field() {
    let dir = tempfile::tempdir().unwrap();
    let spec = std::fs::read_to_string("tests/golden/domain/minimal.json").unwrap();
    let typo = dir.path().join("typo.json");
    std::fs::write(&typo, spec.replacen("\"memory\"", "\"memroy\"", 1)).unwrap();
    let out = csagent(&["domain", "render", typo.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown field `memroy`"));
    assert!(out.stdout.is_empty(), "no XML for an invalid spec");
}

#[test]
fn parse_prints_json_and_refuses_garbage() {
    let out = csagent(&["domain", "parse", "tests/golden/domain/typical-running.xml"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["spec"]["name"].is_string());
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.xml");
    std::fs::write(&bad, "<domain><name>x").unwrap();
    let out = csagent(&["domain", "parse", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(!out.stderr.is_empty());
}
