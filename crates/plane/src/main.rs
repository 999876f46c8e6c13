//! `csagent-mgmt`: the reference management plane and its operator commands.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use tokio_stream::StreamExt;

use csagent_core::logging::LogFormat;
use csagent_mgmt::{admin, show, IdentityConfig, Liveness, Plane, PlaneConfig};
use csagent_proto::v1 as pb;
use csagent_tls::pki::{self as pki, Ca, Validity};
use csagent_tls::TlsFiles;

const DEFAULT_ADMIN: &str = "/run/csagent-mgmt/admin.sock";

#[derive(Parser)]
#[command(
    name = "csagent-mgmt",
    version,
    about = "Reference management plane for csagent"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve agents over mutual TLS, and operators on a local socket.
    Serve(ServeArgs),
    /// Write man pages and shell completions into DIR (package builds).
    #[command(hide = true)]
    GenAssets { dir: PathBuf },
    /// Make a CA, a server certificate and agent certificates.
    Pki {
        #[command(subcommand)]
        cmd: PkiCmd,
    },
    /// List hosts and their state.
    Hosts {
        #[arg(long, default_value = DEFAULT_ADMIN)]
        admin_socket: PathBuf,
        /// Print JSON instead of a table (enum values by name).
        #[arg(long)]
        json: bool,
    },
    /// Send a command to a host and print its progress, events and result,
    /// a line each (enum values by name: RUNNING, OK, DEADLINE_EXCEEDED).
    /// Exit code 1 if the command failed.
    Send {
        #[arg(long, default_value = DEFAULT_ADMIN)]
        admin_socket: PathBuf,
        /// Host UUID.
        #[arg(long)]
        host: String,
        /// The command body as JSON, e.g. '{"echo":{"payload":"hi"}}'; enum
        /// fields take a name ("mode":"LINKED") or a number.
        #[arg(value_name = "JSON")]
        body: String,
        /// Command id (default: a fresh one). Reusing an id never runs it twice.
        #[arg(long)]
        id: Option<String>,
        /// Time budget on the agent, in ms (0: the agent's default).
        #[arg(long, default_value_t = 0)]
        deadline_ms: u64,
        /// Stop waiting after this many seconds.
        #[arg(long, default_value_t = 600)]
        wait_secs: u64,
        /// Print each update as one line of JSON (the proto's field names,
        /// enum values by name) instead of a line for a person.
        #[arg(long)]
        json: bool,
    },
    /// Move a running VM live to another host: the target prepares (or
    /// refuses, changing nothing), the source migrates, the target confirms.
    /// Progress on stderr; exit code 1 when the VM did not move.
    Migrate {
        #[arg(long, default_value = DEFAULT_ADMIN)]
        admin_socket: PathBuf,
        /// VM UUID.
        #[arg(long)]
        vm: uuid::Uuid,
        /// Target host UUID.
        #[arg(long)]
        to: String,
        /// Longest switch-over pause in ms (0: the source's [migration] downtime_ms).
        #[arg(long, default_value_t = 0)]
        max_downtime_ms: u64,
        /// Bandwidth cap in MiB/s (0: the source's [migration] speed_mibps).
        #[arg(long, default_value_t = 0)]
        bandwidth_mib_s: u64,
        /// Throttle the guest's vCPUs when pre-copy does not converge.
        #[arg(long)]
        auto_converge: bool,
        /// Switch to post-copy after this many iterations (0: the source's default).
        #[arg(long, default_value_t = 0)]
        post_copy_after: u32,
        /// Parallel migration connections (0: the source's default).
        #[arg(long, default_value_t = 0)]
        parallel: u32,
        /// Copy local disks to the target instead of shared storage.
        #[arg(long)]
        copy_storage: bool,
        /// Abort (the VM stays on the source) after this many seconds.
        #[arg(long, default_value_t = 3600)]
        timeout_secs: u64,
    },
    /// Maintenance of a host. `on`: it takes no new VMs, its running VMs
    /// move live to hosts chosen by placement, a few at a time, and it ends
    /// MAINTENANCE_STATE_ON, or ERROR naming each VM that could not move
    /// (exit code 1). `off`: back in service.
    Maintenance {
        #[arg(long, default_value = DEFAULT_ADMIN)]
        admin_socket: PathBuf,
        /// Host UUID.
        #[arg(long)]
        host: String,
        #[arg(value_enum)]
        mode: MaintenanceMode,
        /// VMs moved at once.
        #[arg(long, default_value_t = 2)]
        concurrency: usize,
        /// Per VM: the move is aborted after this long and the VM stays.
        #[arg(long, default_value_t = 3600)]
        timeout_secs: u64,
    },
    /// Where would a new VM go? First fit over Up hosts; "Insufficient
    /// capacity" (exit code 1) with each host's reason when none fits.
    Place {
        #[arg(long, default_value = DEFAULT_ADMIN)]
        admin_socket: PathBuf,
        #[arg(long)]
        vcpus: u32,
        #[arg(long)]
        memory_mib: u64,
    },
    /// Print VM events and host state changes as they happen, a line each.
    Events {
        #[arg(long, default_value = DEFAULT_ADMIN)]
        admin_socket: PathBuf,
        /// One line of JSON per event (enum values by name).
        #[arg(long)]
        json: bool,
    },
    /// One-time enrollment tokens for hosts.
    Token {
        #[command(subcommand)]
        cmd: TokenCmd,
    },
    /// Revoke a host: its stream is closed at once and its identity refused
    /// from then on (shown as REVOKED in `hosts`).
    Revoke {
        #[arg(long, default_value = DEFAULT_ADMIN)]
        admin_socket: PathBuf,
        /// Host UUID.
        #[arg(long)]
        host: String,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum MaintenanceMode {
    On,
    Off,
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Create a token for one host UUID; prints it with the CA fingerprint
    /// the host must pin and the command to run there.
    Create {
        #[arg(long, default_value = DEFAULT_ADMIN)]
        admin_socket: PathBuf,
        /// Host UUID the token enrolls (and nothing else).
        #[arg(long)]
        host: String,
        /// Lifetime of the token, seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    #[arg(long, default_value = "0.0.0.0:8250")]
    listen: SocketAddr,
    /// Directory holding ca.pem, server.pem and server.key (from `pki init`).
    #[arg(long)]
    tls_dir: PathBuf,
    #[arg(long, default_value = DEFAULT_ADMIN)]
    admin_socket: PathBuf,
    #[arg(long, default_value = "plane-1")]
    plane_id: String,
    #[arg(long, default_value_t = 2000)]
    heartbeat_interval_ms: u64,
    /// Heartbeats missed this long: the host is in Alert.
    #[arg(long, default_value_t = 6000)]
    alert_after_ms: u64,
    /// Heartbeats missed this long: the host is Down.
    #[arg(long, default_value_t = 20000)]
    down_after_ms: u64,
    #[arg(long, default_value_t = 30000)]
    host_report_interval_ms: u64,
    #[arg(long, default_value_t = 16 * 1024 * 1024)]
    max_message_bytes: usize,
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormatArg,
    /// Where enrollment tokens and revocations are kept. Host identity
    /// (enrollment, renewal, revocation, CA rotation) is on when --tls-dir
    /// holds the CA key (ca.key).
    #[arg(long, default_value = "/var/lib/csagent-mgmt")]
    state_dir: PathBuf,
    /// Lifetime of the host certificates this plane signs, seconds
    /// (default 7 days: short, so renewal is routine).
    #[arg(long, default_value_t = 7 * 24 * 3600)]
    cert_lifetime_secs: u64,
    /// High availability: a silent host is investigated by its neighbours,
    /// fenced when they find it dead, and its HA VMs restarted elsewhere.
    /// Without it a silent host goes Down by heartbeat age and nothing is
    /// restarted.
    #[arg(long)]
    ha: bool,
    /// How one host is fenced before its VMs restart elsewhere:
    /// HOST_UUID=none | HOST_UUID=ipmi:ADDRESS,USER,PASSWORD_FILE |
    /// HOST_UUID=lab:SCRIPT,INDEX. Repeatable.
    #[arg(long = "fence", value_parser = parse_host_fence)]
    fences: Vec<(String, csagent_mgmt::ha::Fence)>,
    /// The fence of hosts without a --fence.
    #[arg(long, default_value = "none")]
    fence_default: csagent_mgmt::ha::Fence,
    /// How long a neighbour watches a silent host (0: three of its storage
    /// heartbeat intervals).
    #[arg(long, default_value_t = 0)]
    ha_check_window_ms: u64,
    /// A host judged alive or undecided is checked again after this long.
    #[arg(long, default_value_t = 10_000)]
    ha_recheck_ms: u64,
}

fn parse_host_fence(s: &str) -> Result<(String, csagent_mgmt::ha::Fence), String> {
    let (host, fence) = s
        .split_once('=')
        .ok_or_else(|| format!("--fence wants HOST_UUID=FENCE, not {s:?}"))?;
    let host = uuid::Uuid::parse_str(host)
        .map_err(|e| format!("--fence: {host:?} is not a host UUID: {e}"))?;
    Ok((host.to_string(), fence.parse()?))
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormatArg {
    Text,
    Json,
}

#[derive(Subcommand)]
enum PkiCmd {
    /// Create a CA and a server certificate in DIR.
    Init {
        #[arg(long)]
        dir: PathBuf,
        /// Names the plane is reached by (DNS names or IPs); repeatable.
        #[arg(long = "name", default_values_t = vec!["localhost".to_string(), "127.0.0.1".to_string()])]
        names: Vec<String>,
        #[arg(long, default_value_t = 30)]
        days: u64,
    },
    /// Issue an agent certificate for a host UUID, signed by DIR's CA.
    Issue {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        host_uuid: uuid::Uuid,
        /// Where to write agent.pem, agent.key and ca.pem (default: DIR/hosts/UUID).
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long, default_value_t = 30)]
        days: u64,
    },
    /// Print the SHA-256 fingerprint of DIR's signing CA (what hosts pin).
    Fingerprint {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Rotate the running plane's CA: a new CA signs from now on, the old one
    /// stays trusted, connected hosts receive the new bundle and renew.
    RotateCa {
        #[arg(long, default_value = DEFAULT_ADMIN)]
        admin_socket: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Cmd::GenAssets { dir } = &cli.cmd {
        use clap::CommandFactory;
        return match csagent_core::assets::write(Cli::command(), dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("csagent-mgmt: {e}");
                ExitCode::from(2)
            }
        };
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("csagent-mgmt: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(dispatch(cli.cmd)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("csagent-mgmt: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn dispatch(cmd: Cmd) -> anyhow::Result<ExitCode> {
    match cmd {
        Cmd::Serve(a) => serve(a).await,
        Cmd::Pki {
            cmd: PkiCmd::RotateCa { admin_socket },
        } => rotate_ca(&admin_socket).await,
        // Handled before the runtime starts.
        Cmd::GenAssets { .. } => Ok(ExitCode::SUCCESS),
        Cmd::Pki { cmd } => pki_cmd(cmd),
        Cmd::Token {
            cmd:
                TokenCmd::Create {
                    admin_socket,
                    host,
                    ttl,
                },
        } => token_create(&admin_socket, host, ttl).await,
        Cmd::Revoke { admin_socket, host } => revoke(&admin_socket, host).await,
        Cmd::Hosts { admin_socket, json } => hosts(&admin_socket, json).await,
        Cmd::Send {
            admin_socket,
            host,
            body,
            id,
            deadline_ms,
            wait_secs,
            json,
        } => {
            let wait = Duration::from_secs(wait_secs);
            send(&admin_socket, host, &body, id, deadline_ms, wait, json).await
        }
        Cmd::Events { admin_socket, json } => events(&admin_socket, json).await,
        Cmd::Maintenance {
            admin_socket,
            host,
            mode,
            concurrency,
            timeout_secs,
        } => {
            let drain = csagent_mgmt::maintenance::Drain {
                host: host.to_ascii_lowercase(),
                concurrency,
                timeout: Duration::from_secs(timeout_secs),
            };
            maintenance(&admin_socket, &drain, mode).await
        }
        Cmd::Migrate {
            admin_socket,
            vm,
            to,
            max_downtime_ms,
            bandwidth_mib_s,
            auto_converge,
            post_copy_after,
            parallel,
            copy_storage,
            timeout_secs,
        } => {
            let ask = csagent_mgmt::migrate::MigrateAsk {
                vm,
                to,
                max_downtime_ms,
                bandwidth_mib_s,
                auto_converge,
                post_copy_after_iterations: post_copy_after,
                parallel_connections: parallel,
                copy_storage,
                timeout: Duration::from_secs(timeout_secs),
            };
            migrate(&admin_socket, &ask).await
        }
        Cmd::Place {
            admin_socket,
            vcpus,
            memory_mib,
        } => place(&admin_socket, vcpus, memory_mib).await,
    }
}

async fn serve(a: ServeArgs) -> anyhow::Result<ExitCode> {
    let format = match a.log_format {
        LogFormatArg::Text => LogFormat::Text,
        LogFormatArg::Json => LogFormat::Json,
    };
    csagent_core::logging::init(format, "info");
    let identity = a.tls_dir.join("ca.key").exists().then(|| IdentityConfig {
        tls_dir: a.tls_dir.clone(),
        state_dir: a.state_dir.clone(),
        leaf_lifetime: Duration::from_secs(a.cert_lifetime_secs.max(60)),
    });
    let plane = Plane::start_with(
        PlaneConfig {
            listen: a.listen,
            tls: TlsFiles {
                ca: a.tls_dir.join("ca.pem"),
                cert: a.tls_dir.join("server.pem"),
                key: a.tls_dir.join("server.key"),
            },
            admin_socket: Some(a.admin_socket),
            liveness: Liveness {
                heartbeat_interval: Duration::from_millis(a.heartbeat_interval_ms),
                alert_after: Duration::from_millis(a.alert_after_ms),
                down_after: Duration::from_millis(a.down_after_ms),
                host_report_interval: Duration::from_millis(a.host_report_interval_ms),
            },
            plane_id: a.plane_id,
            max_message_bytes: a.max_message_bytes,
            ha: a.ha.then(|| csagent_mgmt::ha::HaConfig {
                check_window: Duration::from_millis(a.ha_check_window_ms),
                recheck: Duration::from_millis(a.ha_recheck_ms.max(1000)),
                fences: a.fences.into_iter().collect(),
                default_fence: a.fence_default,
                book_file: Some(a.state_dir.join("ha-book.json")),
                ..Default::default()
            }),
        },
        identity,
    )
    .await?;
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("management plane stopping");
    plane.stop().await;
    Ok(ExitCode::SUCCESS)
}

fn pki_cmd(cmd: PkiCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        PkiCmd::Init { dir, names, days } => {
            let ca = Ca::generate("csagent CA", Validity::for_lifetime(pki::CA_LIFETIME))?;
            let (ca_pem, _) = pki::write_pair(&dir, "ca", &ca.pem)?;
            let server = ca.issue_server(&names, Validity::for_lifetime(days_to(days)))?;
            let (srv, _) = pki::write_pair(&dir, "server", &server)?;
            println!("CA:     {}", ca_pem.display());
            println!("CA fingerprint (SHA-256): {}", ca.fingerprint()?);
            println!("server: {} (names: {})", srv.display(), names.join(", "));
            Ok(ExitCode::SUCCESS)
        }
        PkiCmd::Issue {
            dir,
            host_uuid,
            out,
            days,
        } => {
            let ca = load_ca(&dir)?;
            let pem = ca.issue_agent(&host_uuid, Validity::for_lifetime(days_to(days)))?;
            let out = out.unwrap_or_else(|| dir.join("hosts").join(host_uuid.to_string()));
            let (cert, key) = pki::write_pair(&out, "agent", &pem)?;
            std::fs::write(out.join("ca.pem"), &ca.pem.cert)
                .with_context(|| format!("cannot write {}", out.join("ca.pem").display()))?;
            println!(
                "agent certificate: {}\nagent key:         {}",
                cert.display(),
                key.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        PkiCmd::Fingerprint { dir } => {
            println!("{}", load_ca(&dir)?.fingerprint()?);
            Ok(ExitCode::SUCCESS)
        }
        PkiCmd::RotateCa { .. } => bail!("rotate-ca talks to the running plane"),
    }
}

fn days_to(days: u64) -> Duration {
    Duration::from_secs(days.max(1) * 24 * 3600)
}

fn load_ca(dir: &Path) -> anyhow::Result<Ca> {
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name))
            .with_context(|| format!("cannot read {}", dir.join(name).display()))
    };
    Ok(Ca::from_pem(&read("ca.pem")?, &read("ca.key")?)?)
}

async fn hosts(socket: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let mut client = admin::connect(socket)
        .await
        .with_context(|| format!("cannot reach the plane at {}", socket.display()))?;
    let hosts = client
        .list_hosts(pb::ListHostsRequest {})
        .await?
        .into_inner()
        .hosts;
    if json {
        let named: Vec<_> = hosts
            .iter()
            .map(|h| show::named(show::HOST_SUMMARY, h))
            .collect::<Result<_, _>>()?;
        println!("{}", serde_json::to_string_pretty(&named)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<36}  {:<12} {:<9} {:>4}  {:<22} HYPERVISOR",
        "HOST", "STATE", "CONNECTED", "VMS", "PEER"
    );
    for h in hosts {
        let state = pb::HostState::try_from(h.state).unwrap_or_default();
        let state = if h.revoked {
            "REVOKED"
        } else {
            state.as_str_name().trim_start_matches("HOST_STATE_")
        };
        println!(
            "{:<36}  {:<12} {:<9} {:>4}  {:<22} {}",
            h.host_uuid,
            state,
            if h.connected { "yes" } else { "no" },
            h.vms.len(),
            h.peer_address,
            if h.hypervisor_available {
                "ok"
            } else {
                "unavailable"
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn send(
    socket: &Path,
    host: String,
    body: &str,
    id: Option<String>,
    deadline_ms: u64,
    wait: Duration,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let body = show::parse_body(body)
        .context("the command is not valid JSON for a Command body (e.g. '{\"noop\":{}}')")?;
    let mut client = admin::connect(socket)
        .await
        .with_context(|| format!("cannot reach the plane at {}", socket.display()))?;
    let cmd = pb::Command {
        id: id.unwrap_or_default(),
        deadline_ms,
        body: Some(body),
    };
    let mut updates = client
        .send_command(pb::SendCommandRequest {
            host_uuid: host,
            command: Some(cmd),
        })
        .await?
        .into_inner();
    let wait_secs = wait.as_secs();
    let wait = tokio::time::sleep(wait);
    tokio::pin!(wait);
    loop {
        let next = tokio::select! {
            _ = &mut wait => bail!("no result within {wait_secs} s (the command may still run on the host)"),
            n = updates.next() => n,
        };
        let Some(update) = next else {
            bail!("the plane ended the stream without a result")
        };
        let update = update?;
        if json {
            println!("{}", show::named(show::COMMAND_UPDATE, &update)?);
        } else {
            for line in show::update_lines(&update) {
                println!("{line}");
            }
        }
        if let Some(pb::command_update::Update::Result(r)) = update.update {
            let ok = r.status == pb::CommandStatus::Ok as i32;
            return Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            });
        }
    }
}

async fn maintenance(
    socket: &Path,
    drain: &csagent_mgmt::maintenance::Drain,
    mode: MaintenanceMode,
) -> anyhow::Result<ExitCode> {
    use csagent_mgmt::maintenance;
    let mut client = admin::connect(socket)
        .await
        .with_context(|| format!("cannot reach the plane at {}", socket.display()))?;
    if let MaintenanceMode::Off = mode {
        maintenance::leave(&mut client, &drain.host).await?;
        println!("host {} is back in service", drain.host);
        return Ok(ExitCode::SUCCESS);
    }
    let done = maintenance::enter(&mut client, drain, |line| eprintln!("{line}")).await?;
    if done.failed.is_empty() {
        println!(
            "host {} is in maintenance: {} VMs moved",
            drain.host,
            done.moved.len()
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "host {} is in MAINTENANCE_ERROR: {} VMs moved, {} could not:",
        drain.host,
        done.moved.len(),
        done.failed.len()
    );
    for (vm, why) in &done.failed {
        println!("  {vm}: {why}");
    }
    Ok(ExitCode::from(1))
}

async fn migrate(
    socket: &Path,
    ask: &csagent_mgmt::migrate::MigrateAsk,
) -> anyhow::Result<ExitCode> {
    let mut client = admin::connect(socket)
        .await
        .with_context(|| format!("cannot reach the plane at {}", socket.display()))?;
    let show = |p: &pb::CommandProgress| {
        if let Some(m) = &p.migration {
            let pct = (m.data_processed_bytes * 100)
                .checked_div(m.data_total_bytes)
                .unwrap_or(0);
            eprintln!(
                "migrate: {pct}% ({} of {} MiB, {} MiB left), iteration {}, dirty {} pages/s",
                m.data_processed_bytes >> 20,
                m.data_total_bytes >> 20,
                m.data_remaining_bytes >> 20,
                m.iteration,
                m.dirty_rate_pages_s
            );
        }
    };
    match csagent_mgmt::migrate::migrate(&mut client, ask, show).await {
        Ok(m) => {
            println!(
                "VM {} moved to {} in {} ms (downtime {} ms, {} MiB{})",
                ask.vm,
                ask.to,
                m.total_ms,
                m.downtime_ms,
                m.data_total_bytes >> 20,
                if m.post_copy { ", post-copy" } else { "" }
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("csagent-mgmt migrate: {e:#}");
            Ok(ExitCode::from(1))
        }
    }
}

async fn events(socket: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let mut client = admin::connect(socket)
        .await
        .with_context(|| format!("cannot reach the plane at {}", socket.display()))?;
    let mut stream = client
        .watch_events(pb::WatchEventsRequest {})
        .await?
        .into_inner();
    while let Some(ev) = stream.next().await {
        let ev = ev?;
        if json {
            println!("{}", show::named(show::PLANE_EVENT, &ev)?);
        } else {
            println!("{}", show::plane_event_line(&ev));
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn place(socket: &Path, vcpus: u32, memory_mib: u64) -> anyhow::Result<ExitCode> {
    let mut client = admin::connect(socket)
        .await
        .with_context(|| format!("cannot reach the plane at {}", socket.display()))?;
    match client
        .place_vm(pb::PlaceVmRequest {
            vcpus,
            memory_mib,
            exclude_hosts: Vec::new(),
        })
        .await
    {
        Ok(r) => {
            println!("{}", r.into_inner().host_uuid);
            Ok(ExitCode::SUCCESS)
        }
        Err(s) if s.code() == tonic::Code::ResourceExhausted => {
            eprintln!("{}", s.message());
            Ok(ExitCode::from(1))
        }
        Err(s) => bail!("{}", s.message()),
    }
}

async fn token_create(socket: &Path, host: String, ttl: u64) -> anyhow::Result<ExitCode> {
    let mut client = admin::connect(socket)
        .await
        .with_context(|| format!("cannot reach the plane at {}", socket.display()))?;
    let r = client
        .create_token(pb::CreateTokenRequest {
            host_uuid: host.clone(),
            ttl_secs: ttl,
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();
    let until = time::OffsetDateTime::from_unix_timestamp(r.expires_unix_ms / 1000)
        .map(|t| t.to_string())
        .unwrap_or_default();
    println!("token:          {}", r.token);
    println!("host:           {host}");
    println!("expires:        {until} (usable once)");
    println!("CA fingerprint: {}", r.ca_fingerprint);
    println!(
        "on the host:    csagent enroll --plane PLANE:PORT --token {} --ca-fingerprint {}",
        r.token, r.ca_fingerprint
    );
    Ok(ExitCode::SUCCESS)
}

async fn revoke(socket: &Path, host: String) -> anyhow::Result<ExitCode> {
    let mut client = admin::connect(socket)
        .await
        .with_context(|| format!("cannot reach the plane at {}", socket.display()))?;
    let r = client
        .revoke_host(pb::RevokeHostRequest {
            host_uuid: host.clone(),
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();
    println!(
        "host {host}: {}{}",
        if r.newly_revoked {
            "revoked"
        } else {
            "was already revoked"
        },
        if r.disconnected {
            "; its stream was closed"
        } else {
            ""
        }
    );
    Ok(ExitCode::SUCCESS)
}

async fn rotate_ca(socket: &Path) -> anyhow::Result<ExitCode> {
    let mut client = admin::connect(socket)
        .await
        .with_context(|| format!("cannot reach the plane at {}", socket.display()))?;
    let r = client
        .rotate_ca(pb::RotateCaRequest {})
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();
    println!("new CA fingerprint: {}", r.ca_fingerprint);
    println!(
        "bundle (new and old CA) sent to {} connected host(s); they renew now",
        r.notified_hosts
    );
    Ok(ExitCode::SUCCESS)
}
