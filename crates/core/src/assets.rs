//! Man pages and shell completions for the two binaries, generated from
//! their clap definitions at package build time (`csagent gen-assets DIR`,
//! `csagent-mgmt gen-assets DIR`, both hidden), so they cannot drift from
//! the real options and nothing generated is committed.
//!
//! Owns the file layout under DIR that packaging expects:
//! `man/<bin>.1`, `man/<bin>-<sub>.1`, `completions/<bin>.bash`,
//! `completions/_<bin>` (zsh), `completions/<bin>.fish`.

use std::path::{Path, PathBuf};

use clap_complete::Shell;

#[derive(Debug, thiserror::Error)]
#[error("cannot write {path}: {source}")]
pub struct AssetError {
    path: PathBuf,
    source: std::io::Error,
}

/// Writes man pages (the command and each visible subcommand) and
/// completions for bash, zsh and fish.
pub fn write(cmd: clap::Command, out: &Path) -> Result<(), AssetError> {
    let mut cmd = cmd;
    cmd.build();
    let man = out.join("man");
    let comp = out.join("completions");
    for dir in [&man, &comp] {
        std::fs::create_dir_all(dir).map_err(|source| AssetError {
            path: dir.clone(),
            source,
        })?;
    }
    let name = cmd.get_name().to_string();
    man_page(&cmd, &man.join(format!("{name}.1")))?;
    for sub in cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        let full = format!("{name}-{}", sub.get_name());
        let page = sub.clone().name(full.clone());
        man_page(&page, &man.join(format!("{full}.1")))?;
    }
    for (shell, file) in [
        (Shell::Bash, format!("{name}.bash")),
        (Shell::Zsh, format!("_{name}")),
        (Shell::Fish, format!("{name}.fish")),
    ] {
        let path = comp.join(file);
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut cmd, name.clone(), &mut buf);
        write_file(&path, &buf)?;
    }
    Ok(())
}

fn man_page(cmd: &clap::Command, path: &Path) -> Result<(), AssetError> {
    let mut buf = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .render(&mut buf)
        .map_err(|source| AssetError {
            path: path.to_path_buf(),
            source,
        })?;
    write_file(path, &buf)
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), AssetError> {
    std::fs::write(path, bytes).map_err(|source| AssetError {
        path: path.to_path_buf(),
        source,
    })
}
