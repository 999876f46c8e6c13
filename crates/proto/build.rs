//! Compiles every .proto under proto/ into Rust (prost + tonic).
//!
//! Messages also derive serde so operators can write commands and VM specs as
//! JSON with the proto's own field names (`csagent-mgmt send`, `csagent domain
//! render`); enums inside messages stay numeric on the wire and in serde's
//! JSON. A misspelled field is an error naming it, never silently dropped.
//! The descriptor set is kept too, so the plane's CLI can show (and accept)
//! enum values by name where a person reads and writes them.

use std::path::{Path, PathBuf};

fn protos(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            protos(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "proto") {
            out.push(path);
        }
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut files = Vec::new();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    protos(&root, &mut files)?;
    files.sort();
    println!("cargo:rerun-if-changed={}", root.display());
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("csagent_descriptor.bin"))
        .message_attribute(
            ".",
            "#[derive(serde::Serialize, serde::Deserialize)] #[serde(default, deny_unknown_fields)]",
        )
        .enum_attribute(
            ".",
            "#[derive(serde::Serialize, serde::Deserialize)] #[serde(rename_all = \"snake_case\")]",
        )
        .compile_protos(&files, &[root])?;
    Ok(())
}
