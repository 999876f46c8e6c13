//! Who may talk to the plane: every wrong client is refused, and refusing it
//! costs the legitimate agents nothing.

use std::sync::Arc;
use std::time::Duration;

use csagent::dial::{dial, DialOptions};
use csagent::endpoints::Endpoint;
use csagent_proto::v1 as pb;
use csagent_proto::v1::agent_link_client::AgentLinkClient;
use csagent_testkit::*;
use csagent_tls::pki::Validity;
use csagent_tls::{self as tls, TlsFiles};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_stream::wrappers::ReceiverStream;

fn opts() -> DialOptions {
    DialOptions {
        connect_timeout: Duration::from_secs(2),
        keepalive_interval: Duration::from_secs(1),
        keepalive_timeout: Duration::from_secs(1),
    }
}

/// Tries one session: dial, send Register for `claimed`, read the answer.
async fn attempt(
    host: &str,
    port: u16,
    cfg: Arc<rustls::ClientConfig>,
    claimed: &uuid::Uuid,
    pad: usize,
) -> Result<pb::RegisterAck, String> {
    let ep = Endpoint {
        host: host.into(),
        port,
    };
    let channel = dial(&ep, cfg, &opts()).await.map_err(|e| e.to_string())?;
    let mut client = AgentLinkClient::new(channel).max_encoding_message_size(64 << 20);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let register = pb::Register {
        host_uuid: claimed.to_string(),
        facts: Some(pb::HostFacts {
            hostname: "x".repeat(pad),
            ..Default::default()
        }),
        ..Default::default()
    };
    tx.send(pb::AgentMessage {
        msg: Some(pb::agent_message::Msg::Register(register)),
    })
    .await
    .unwrap();
    let mut inbound = client
        .session(ReceiverStream::new(rx))
        .await
        .map_err(|e| format!("{e:?}"))?
        .into_inner();
    match inbound.message().await {
        Ok(Some(pb::PlaneMessage {
            msg: Some(pb::plane_message::Msg::RegisterAck(a)),
        })) => Ok(a),
        other => Err(format!("{other:?}")),
    }
}

fn client(files: &TlsFiles) -> Arc<rustls::ClientConfig> {
    tls::client_config(files).unwrap()
}

async fn plane(pki: &TestPki, max: usize) -> csagent_mgmt::Plane {
    start_plane(pki, fast_liveness(), max).await
}

#[tokio::test]
async fn valid_agent_is_accepted() {
    let pki = TestPki::new(&["localhost", "127.0.0.1"]);
    let p = plane(&pki, 16 << 20).await;
    let host = uuid::Uuid::new_v4();
    attempt(
        "127.0.0.1",
        p.addr.port(),
        client(&pki.agent(&host)),
        &host,
        0,
    )
    .await
    .expect("valid agent refused");
    p.stop().await;
}

#[tokio::test]
async fn foreign_ca_expired_and_missing_certificates_are_refused() {
    let pki = TestPki::new(&["localhost", "127.0.0.1"]);
    let p = plane(&pki, 16 << 20).await;
    let port = p.addr.port();
    let host = uuid::Uuid::new_v4();

    let other = TestPki::new(&["localhost"]);
    let mut foreign = other.agent(&host);
    foreign.ca = pki.server.ca.clone(); // trusts the real plane, but its cert is foreign
    let e = attempt("127.0.0.1", port, client(&foreign), &host, 0)
        .await
        .unwrap_err();
    println!("foreign CA: {e}");
    // Both test CAs carry the same name, so the plane finds "its" issuer
    // and the signature does not verify: rustls answers DecryptError. A CA
    // of another name would be UnknownCA. Either is the certificate check
    // refusing, not a network failure.
    assert!(
        e.contains("received fatal alert: DecryptError")
            || e.contains("received fatal alert: UnknownCA"),
        "the refusal is not the certificate check: {e}"
    );

    let now = time::OffsetDateTime::now_utc();
    let expired = pki.agent_with(
        &host,
        Validity {
            not_before: now - time::Duration::days(2),
            not_after: now - time::Duration::days(1),
        },
    );
    let e = attempt("127.0.0.1", port, client(&expired), &host, 0)
        .await
        .unwrap_err();
    println!("expired: {e}");
    assert!(e.contains("CertificateExpired"), "{e}");

    let roots = {
        let mut r = rustls::RootCertStore::empty();
        let pem = std::fs::read(&pki.server.ca).unwrap();
        for c in rustls_pki_types::pem::PemObject::pem_slice_iter(&pem) {
            r.add(c.unwrap()).unwrap();
        }
        r
    };
    let mut anon = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    anon.alpn_protocols = vec![b"h2".to_vec()];
    let e = attempt("127.0.0.1", port, Arc::new(anon), &host, 0)
        .await
        .unwrap_err();
    println!("no client cert: {e}");
    assert!(e.contains("CertificateRequired"), "{e}");

    assert!(
        p.registry.list().is_empty(),
        "a refused client was registered"
    );
    p.stop().await;
}

#[tokio::test]
async fn plane_with_wrong_name_is_refused_by_the_agent() {
    let pki = TestPki::new(&["plane.example"]);
    let p = plane(&pki, 16 << 20).await;
    let host = uuid::Uuid::new_v4();
    let e = attempt(
        "127.0.0.1",
        p.addr.port(),
        client(&pki.agent(&host)),
        &host,
        0,
    )
    .await
    .unwrap_err();
    assert!(
        e.contains("NotValidForName") || e.contains("not valid for name"),
        "{e}"
    );
    p.stop().await;
}

#[tokio::test]
async fn certificate_for_one_host_cannot_register_as_another() {
    let pki = TestPki::new(&["localhost", "127.0.0.1"]);
    let p = plane(&pki, 16 << 20).await;
    let host = uuid::Uuid::new_v4();
    let other = uuid::Uuid::new_v4();
    let e = attempt(
        "127.0.0.1",
        p.addr.port(),
        client(&pki.agent(&host)),
        &other,
        0,
    )
    .await
    .unwrap_err();
    assert!(e.contains("PermissionDenied"), "{e}");
    assert!(p.registry.list().is_empty());
    p.stop().await;
}

#[tokio::test]
async fn plaintext_garbage_and_oversized_do_not_harm_other_agents() {
    let pki = TestPki::new(&["localhost", "127.0.0.1"]);
    let p = plane(&pki, 64 * 1024).await;
    let port = p.addr.port();
    // A legitimate agent, connected throughout.
    let host = uuid::Uuid::new_v4();
    let work = workdir();
    let cfg = agent_config(&host, &pki.agent(&host), &[p.addr.to_string()], work.path());
    let stop = tokio_util::sync::CancellationToken::new();
    let agent = tokio::spawn(csagent::agent::run(cfg, stop.clone()));
    assert!(wait_for(Duration::from_secs(10), || is_up(&p, &host)).await);

    // Plaintext HTTP/2 (a gRPC client without TLS).
    let plain = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await;
    if let Ok(ch) = plain {
        let (_tx, rx) = tokio::sync::mpsc::channel::<pb::AgentMessage>(1);
        let r = AgentLinkClient::new(ch)
            .session(ReceiverStream::new(rx))
            .await;
        assert!(r.is_err(), "plaintext session accepted");
    }

    // Garbage bytes: the server drops the connection.
    let mut tcp = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    let garbage: Vec<u8> = (0..65536u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let _ = tcp.write_all(&garbage).await;
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "garbage connection not closed");

    // An authenticated client sending a message over the plane's limit.
    let big = uuid::Uuid::new_v4();
    let e = attempt(
        "127.0.0.1",
        port,
        client(&pki.agent(&big)),
        &big,
        200 * 1024,
    )
    .await
    .unwrap_err();
    println!("oversized: {e}");
    assert!(e.contains("OutOfRange"), "{e}");
    assert!(host_summary(&p, &big).is_none());

    // The legitimate agent never noticed.
    let res = call(
        &p,
        &host,
        cmd("", 0, echo("fine", 0)),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(res.status, pb::CommandStatus::Ok as i32);
    assert_eq!(
        host_summary(&p, &host).unwrap().state,
        pb::HostState::Up as i32
    );
    stop.cancel();
    agent.await.unwrap().unwrap();
    p.stop().await;
}

#[tokio::test]
async fn key_readable_by_others_is_refused_with_a_clear_message() {
    let pki = TestPki::new(&["localhost"]);
    let host = uuid::Uuid::new_v4();
    let files = pki.agent(&host);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&files.key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = tls::client_config(&files).unwrap_err().to_string();
    assert!(e.contains("chmod 600"), "{e}");
}

/// Enough descriptors for both ends of `n` connections in this process.
fn raise_fd_limit(n: u64) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    let want = (soft.max(n)).min(hard);
    setrlimit(Resource::RLIMIT_NOFILE, want, hard).unwrap();
}

// Anyone may open a TCP connection (enrollment is for hosts without a
// certificate yet). A thousand that never speak TLS: the plane closes what
// is past its handshake limits at once, and the host it serves notices
// nothing: heartbeats flow and a command round-trips meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_idle_connections_are_shed_and_the_hosts_are_still_served() {
    raise_fd_limit(4096);
    let f = Fixture::new(fast_liveness()).await;
    let agent = run_in_process(f.config());
    f.wait_up(String::new).await;
    let seq = || host_summary(&f.plane, &f.host).map_or(0, |h| h.heartbeat_seq);
    let before = seq();

    let mut idle = Vec::new();
    for _ in 0..1000 {
        idle.push(tokio::net::TcpStream::connect(f.plane.addr).await.unwrap());
    }
    let r = call(
        &f.plane,
        &f.host,
        cmd("", 0, echo("still served", 0)),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(r.status, pb::CommandStatus::Ok as i32, "{r:?}");
    // A socket the plane shed reads EOF at once; one it keeps stays silent
    // until its handshake times out (10 s).
    let reads = idle.iter_mut().map(|s| async move {
        let mut b = [0u8; 1];
        matches!(
            tokio::time::timeout(Duration::from_secs(2), s.read(&mut b)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    });
    let shed = futures::future::join_all(reads)
        .await
        .iter()
        .filter(|c| **c)
        .count();
    assert!(
        shed >= 900,
        "only {shed} of 1000 idle connections were shed"
    );
    assert!(
        shed < 1000,
        "every connection was shed, even within the limits"
    );
    assert!(is_up(&f.plane, &f.host));
    assert!(
        seq() >= before + 5,
        "heartbeats stalled: {before} -> {}",
        seq()
    );
    drop(idle);

    // New hosts get in again.
    let other = uuid::Uuid::new_v4();
    let work = workdir();
    let cfg = agent_config(
        &other,
        &f.pki.agent(&other),
        &[f.plane.addr.to_string()],
        work.path(),
    );
    let second = run_in_process(cfg);
    assert!(
        wait_for(Duration::from_secs(10), || is_up(&f.plane, &other)).await,
        "a new host could not register after the flood"
    );
    second.stop().await;
    agent.stop().await;
    f.plane.stop().await;
}

fn mode_of(p: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

// Whoever can use the admin socket controls every host: it is 0600 in a
// directory the plane makes 0700, and even where an operator opened both
// up, a client that is neither root nor the plane's user is dropped on its
// credentials.
#[tokio::test]
async fn the_admin_socket_is_private_and_refuses_other_users_on_their_credentials() {
    use std::os::unix::fs::PermissionsExt;
    let pki = TestPki::new(&["localhost", "127.0.0.1"]);
    let work = workdir();
    let dir = work.path().join("admin");
    let sock = dir.join("admin.sock");
    let p = start_plane_at(&pki, fast_liveness(), 16 << 20, Some(sock.clone())).await;
    assert_eq!(mode_of(&sock), 0o600);
    assert_eq!(mode_of(&dir), 0o700);

    for (path, mode) in [
        (work.path(), 0o755),
        (dir.as_path(), 0o755),
        (sock.as_path(), 0o666),
    ] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let nobody = nix::unistd::User::from_name("nobody")
        .unwrap()
        .expect("a nobody user");
    // Async: the plane runs on this test's runtime.
    let out = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::process::Command::new(mgmt_bin())
            .args(["hosts", "--admin-socket", sock.to_str().unwrap()])
            .uid(nobody.uid.as_raw())
            .gid(nobody.gid.as_raw())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("csagent-mgmt as nobody hung")
    .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    println!("another user got: {}", text.trim());
    assert!(
        !out.status.success(),
        "another user listed the hosts: {text}"
    );
    assert!(
        !text.contains("Permission denied"),
        "the file mode stopped it, not the credentials check: {text}"
    );
    // Root still gets in.
    let mut admin = csagent_mgmt::admin::connect(&sock).await.unwrap();
    admin.list_hosts(pb::ListHostsRequest {}).await.unwrap();
    p.stop().await;
}
