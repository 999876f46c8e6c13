//! Runs the `nft` binary: one JSON transaction on stdin (`nft -j -f -`), or a
//! JSON listing. Arguments are a fixed list; nothing goes through a shell.
//!
//! It neither renders nor interprets rules (ruleset.rs does).

use std::path::PathBuf;
use std::process::Stdio;

use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use super::error::{NetworkError, Result};

/// The nft binary to run.
#[derive(Debug, Clone)]
pub struct Nft {
    binary: PathBuf,
}

impl Default for Nft {
    fn default() -> Self {
        Self {
            binary: PathBuf::from("nft"),
        }
    }
}

impl Nft {
    pub fn new(binary: PathBuf) -> Self {
        Self { binary }
    }

    // The network crate's one external command: nft, run without a shell.
    #[allow(clippy::disallowed_methods)]
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.binary);
        c.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        c
    }

    fn spawn_err(&self, op: &'static str, e: std::io::Error) -> NetworkError {
        NetworkError::Nft {
            op,
            detail: format!(
                "cannot run {}: {e} (install the nftables package)",
                self.binary.display()
            ),
        }
    }

    /// Applies `doc` (an `{"nftables": [...]}` document) as one atomic
    /// transaction: either all of it is in force afterwards or none of it.
    pub async fn apply(&self, doc: &Value) -> Result<()> {
        let input = serde_json::to_vec(doc).map_err(|e| NetworkError::Nft {
            op: "serialise ruleset",
            detail: e.to_string(),
        })?;
        let mut child = self
            .command(&["-j", "-f", "-"])
            .spawn()
            .map_err(|e| self.spawn_err("apply ruleset", e))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(&input)
                .await
                .map_err(|e| self.spawn_err("apply ruleset", e))?;
        }
        let out = child
            .wait_with_output()
            .await
            .map_err(|e| self.spawn_err("apply ruleset", e))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(NetworkError::Nft {
                op: "apply ruleset",
                detail: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            })
        }
    }

    /// `nft -j list table <family> <name>`, or None when it does not exist.
    pub async fn list_table(&self, family: &str, name: &str) -> Result<Option<Value>> {
        let out = self
            .command(&["-j", "list", "table", family, name])
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| self.spawn_err("list table", e))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            if err.contains("No such file or directory") {
                return Ok(None);
            }
            return Err(NetworkError::Nft {
                op: "list table",
                detail: err.trim().to_owned(),
            });
        }
        serde_json::from_slice(&out.stdout)
            .map(Some)
            .map_err(|e| NetworkError::Nft {
                op: "parse listing",
                detail: e.to_string(),
            })
    }
}
