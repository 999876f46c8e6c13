//! `csagent`: the host agent's command line.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use csagent::config::{self, Config};

#[derive(Parser)]
#[command(
    name = "csagent",
    version,
    about = "KVM host agent for CloudStack-style clouds"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the agent (what the systemd unit starts).
    Run {
        #[arg(short, long, env = "CSAGENT_CONFIG", default_value = config::DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Preflight: KVM, libvirt, qemu-img, config, certificate, management
    /// endpoints over TLS, clock, network devices. Exit code 1 on a failure.
    Check {
        #[arg(short, long, env = "CSAGENT_CONFIG", default_value = config::DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Get this host's first certificate from the plane with a one-time
    /// token (csagent-mgmt token create). Writes the configured ca_file,
    /// cert_file and key_file (mode 0600); the key never leaves the host.
    Enroll {
        #[arg(short, long, env = "CSAGENT_CONFIG", default_value = config::DEFAULT_PATH)]
        config: PathBuf,
        /// The plane's agent port, HOST:PORT.
        #[arg(long)]
        plane: String,
        /// The one-time enrollment token. Tokens are base64url and may begin
        /// with '-', so the value is never read as a flag.
        #[arg(long, env = "CSAGENT_ENROLL_TOKEN", allow_hyphen_values = true)]
        token: String,
        /// SHA-256 of the plane's CA certificate (default: management.ca_fingerprint).
        #[arg(long)]
        ca_fingerprint: Option<String>,
    },
    /// Show what the running agent is doing: link state, endpoint, last
    /// heartbeat, in-flight commands, VMs, host health. Root only (it reads
    /// the agent's status socket, status.socket in the config).
    Status {
        #[arg(short, long, env = "CSAGENT_CONFIG", default_value = config::DEFAULT_PATH)]
        config: PathBuf,
        /// The status socket, instead of the one named in the config.
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Print the status document as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Work with configuration files.
    Config {
        #[command(subcommand)]
        cmd: ConfigCmd,
    },
    /// See what the agent would define for a VM, or understands of a domain.
    Domain {
        #[command(subcommand)]
        cmd: DomainCmd,
    },
    /// Write man pages and shell completions into DIR (package builds).
    #[command(hide = true)]
    GenAssets { dir: PathBuf },
}

#[derive(Subcommand)]
enum DomainCmd {
    /// Print the libvirt XML the agent would define for a VM spec (JSON in
    /// the proto's field names, as in StartVm). Invalid specs name the field.
    Render { spec_file: PathBuf },
    /// Print what the agent understands of a domain XML (e.g. `virsh
    /// dumpxml` output) as JSON, with what it could not understand.
    Parse { xml_file: PathBuf },
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Convert a CloudStack agent.properties into agent.toml; says key by key
    /// what could not be mapped.
    ImportProperties {
        file: PathBuf,
        /// Write here instead of standard output.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Validate a config file and exit.
    Check {
        #[arg(short, long, env = "CSAGENT_CONFIG", default_value = config::DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Print the defaults as TOML.
    Defaults,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Run { config } => run(&config),
        Cmd::Check { config } => preflight(&config),
        Cmd::Enroll {
            config,
            plane,
            token,
            ca_fingerprint,
        } => enroll(&config, &plane, &token, ca_fingerprint),
        Cmd::Config { cmd } => config_cmd(cmd),
        Cmd::Domain { cmd } => domain_cmd(cmd),
        Cmd::Status {
            config,
            socket,
            json,
        } => status(&config, socket, json),
        Cmd::GenAssets { dir } => {
            use clap::CommandFactory;
            csagent_core::assets::write(Cli::command(), &dir)
                .map(|()| ExitCode::SUCCESS)
                .map_err(Into::into)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("csagent: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(path: &std::path::Path) -> anyhow::Result<ExitCode> {
    let cfg = Config::load(path)?;
    csagent_core::logging::init(cfg.log.format, &cfg.log.level);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("csagent")
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async {
        let stop = CancellationToken::new();
        spawn_signal_handler(stop.clone())?;
        csagent::agent::run(cfg, stop).await?;
        Ok(ExitCode::SUCCESS)
    })
}

fn preflight(path: &std::path::Path) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let checks = rt.block_on(csagent::check::run(path));
    print!("{}", csagent::check::render(&checks));
    let failed = checks
        .iter()
        .any(|c| c.verdict == csagent::check::Verdict::Fail);
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn enroll(
    path: &std::path::Path,
    plane: &str,
    token: &str,
    fingerprint: Option<String>,
) -> anyhow::Result<ExitCode> {
    let cfg = Config::load(path)?;
    let m = &cfg.management;
    let host = csagent_host::host_uuid(&cfg.agent.state_dir, Some(&cfg.agent.guid))?;
    let files = csagent_tls::TlsFiles {
        ca: m.ca_file.clone(),
        cert: m.cert_file.clone(),
        key: m.key_file.clone(),
    };
    let fingerprint = fingerprint.unwrap_or_else(|| m.ca_fingerprint.clone());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let done = rt.block_on(csagent::identity::enroll(csagent::identity::EnrollParams {
        plane,
        default_port: m.port,
        token,
        ca_fingerprint: &fingerprint,
        host,
        files: &files,
        connect_timeout: m.connect_timeout(),
    }))?;
    let until = time::OffsetDateTime::from_unix_timestamp(done.not_after_unix_ms / 1000)
        .map(|t| t.to_string())
        .unwrap_or_default();
    println!(
        "enrolled host {host}\ncertificate: {} (valid until {until}; renewed automatically)\nkey:         {} (mode 0600)\nCA bundle:   {}",
        files.cert.display(),
        files.key.display(),
        files.ca.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Reads the running agent's status document and prints it.
fn status(
    config: &std::path::Path,
    socket: Option<PathBuf>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let socket = socket.unwrap_or_else(|| status_socket_of(config));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let (doc, raw) = rt.block_on(csagent::status::server::fetch(&socket))?;
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    // A closed pipe (`| head`) is not an error worth a panic.
    let _ = if json {
        out.write_all(&raw).and_then(|()| writeln!(out))
    } else {
        let now = csagent::link::session::unix_ms();
        out.write_all(csagent::status::render::text(&doc, now).as_bytes())
    };
    Ok(ExitCode::SUCCESS)
}

/// The socket named by the config file, read leniently: `csagent status`
/// must work on a host whose config would not pass validation (that is
/// often why an operator looks). No file or no key: the default.
fn status_socket_of(config: &std::path::Path) -> PathBuf {
    std::fs::read_to_string(config)
        .ok()
        .and_then(|t| toml::from_str::<toml::Value>(&t).ok())
        .and_then(|v| v.get("status")?.get("socket")?.as_str().map(PathBuf::from))
        .unwrap_or_else(|| csagent::config::StatusSection::default().socket)
}

/// SIGTERM (systemctl stop) and SIGINT (Ctrl-C) both start a clean shutdown.
fn spawn_signal_handler(stop: CancellationToken) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
        stop.cancel();
    });
    Ok(())
}

fn config_cmd(cmd: ConfigCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        ConfigCmd::ImportProperties { file, output } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let imp = config::properties::import(&text);
            let toml = toml::to_string_pretty(&imp.config).context("cannot render TOML")?;
            let header = format!(
                "# Imported from {} by csagent config import-properties.\n\n",
                file.display()
            );
            match output {
                Some(p) => std::fs::write(&p, header + &toml)
                    .with_context(|| format!("cannot write {}", p.display()))?,
                None => print!("{header}{toml}"),
            }
            for (key, reason) in &imp.unmapped {
                eprintln!("not imported: {key}: {reason}");
            }
            if let Err((key, reason)) = imp.config.validate() {
                eprintln!("the imported config is not valid yet: key `{key}`: {reason}");
            }
            Ok(ExitCode::SUCCESS)
        }
        ConfigCmd::Check { config } => {
            Config::load(&config)?;
            println!("{}: valid", config.display());
            Ok(ExitCode::SUCCESS)
        }
        ConfigCmd::Defaults => {
            print!(
                "{}",
                toml::to_string_pretty(&Config::default()).context("cannot render TOML")?
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Text in, text out: render a spec or parse a domain.
type DomainTool = fn(&str) -> Result<String, csagent_domain::DomainError>;

fn domain_cmd(cmd: DomainCmd) -> anyhow::Result<ExitCode> {
    let (path, f): (PathBuf, DomainTool) = match cmd {
        DomainCmd::Render { spec_file } => (spec_file, csagent::convert::domain::render_spec_json),
        DomainCmd::Parse { xml_file } => (xml_file, csagent::convert::domain::parse_xml_to_json),
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    // The error's own text already carries its cause; no chain to append.
    let out = f(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    use std::io::Write;
    // A closed pipe (`| head`) is not an error worth a panic.
    let _ = writeln!(std::io::stdout().lock(), "{out}");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_enrollment_token_that_begins_with_a_dash_is_a_value() {
        let cli = Cli::try_parse_from(["csagent", "enroll", "--plane", "p:1", "--token", "-Vx_y"])
            .expect("a token beginning with '-' parses");
        match cli.cmd {
            Cmd::Enroll { token, .. } => assert_eq!(token, "-Vx_y"),
            _ => panic!("not enroll"),
        }
    }
}
