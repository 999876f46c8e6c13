//! Host identity, enrollment and revocation over real TLS: a host gets its
//! first certificate with a one-time token and a pinned CA fingerprint, and
//! every way of cheating that is refused.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use csagent_proto::v1 as pb;
use csagent_proto::v1::enrollment_client::EnrollmentClient;
use csagent_testkit::identity::*;
use csagent_testkit::*;

fn err_text<T>(r: Result<T, csagent::identity::IdentityError>) -> String {
    match r {
        Ok(_) => panic!("expected a refusal"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn enrollment_end_to_end_with_the_real_binary() {
    let p = identity_plane(Duration::from_secs(3600)).await;
    let host = uuid::Uuid::new_v4();
    let work = workdir();
    let (files, cfg) = p.enrolling_config(&host, work.path());
    let cfg_path = work.path().join("agent.toml");
    std::fs::write(&cfg_path, toml::to_string(&cfg).unwrap()).unwrap();
    let token = p.token(&host, Duration::from_secs(60));
    // Async: the plane runs on this test's runtime.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_csagent"))
        .args(["enroll", "--config", cfg_path.to_str().unwrap()])
        .args(["--plane", &p.endpoint(), "--token", &token])
        .output()
        .await
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains(&host.to_string()), "{text}");
    let mode = std::fs::metadata(&files.key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "key file mode");
    let info = csagent_tls::cert_info(&files.cert).unwrap();
    assert_eq!(info.identity.as_deref(), Some(host.to_string().as_str()));
    // The CA file the agent now trusts is the plane's bundle.
    assert_eq!(
        std::fs::read_to_string(&files.ca).unwrap(),
        p.authority().bundle_pem()
    );

    let agent = run_in_process(cfg);
    assert!(
        wait_for(Duration::from_secs(10), || is_up(&p.plane, &host)).await,
        "enrolled agent never registered"
    );
    let r = call(
        &p.plane,
        &host,
        cmd("", 0, echo("enrolled", 0)),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(r.status, pb::CommandStatus::Ok as i32, "{r:?}");
    let summary = host_summary(&p.plane, &host).unwrap();
    assert_eq!(summary.cert_not_after_unix_ms, info.not_after * 1000);
    agent.stop().await;
    p.plane.stop().await;
}

#[tokio::test]
async fn enrollment_at_first_start_with_a_token_file() {
    let p = identity_plane(Duration::from_secs(3600)).await;
    let host = uuid::Uuid::new_v4();
    let work = workdir();
    let (_, mut cfg) = p.enrolling_config(&host, work.path());
    let token_file = work.path().join("token");
    std::fs::write(&token_file, p.token(&host, Duration::from_secs(60))).unwrap();
    cfg.management.enroll_token_file = token_file;
    let agent = run_in_process(cfg);
    assert!(
        wait_for(Duration::from_secs(10), || is_up(&p.plane, &host)).await,
        "agent did not enroll and register at first start"
    );
    agent.stop().await;
    p.plane.stop().await;
}

#[tokio::test]
async fn reused_expired_and_foreign_tokens_are_refused() {
    let p = identity_plane(Duration::from_secs(3600)).await;
    let host = uuid::Uuid::new_v4();
    let other = uuid::Uuid::new_v4();
    let work = workdir();
    let fp = p.fingerprint();
    let token = p.token(&host, Duration::from_secs(60));

    // A token issued for another host is refused and stays usable.
    let e = err_text(p.try_enroll(&other, &token, &fp, work.path()).await);
    assert!(e.contains(&format!("is for host {host}")), "{e}");
    p.try_enroll(&host, &token, &fp, work.path()).await.unwrap();
    // Used once: never again.
    let e = err_text(p.try_enroll(&host, &token, &fp, work.path()).await);
    assert!(e.contains("already used"), "{e}");

    let short = p.token(&host, Duration::from_millis(1));
    tokio::time::sleep(Duration::from_millis(20)).await;
    let e = err_text(p.try_enroll(&host, &short, &fp, work.path()).await);
    assert!(e.contains("expired"), "{e}");
    let e = err_text(p.try_enroll(&host, "made-up", &fp, work.path()).await);
    assert!(e.contains("unknown"), "{e}");
    p.plane.stop().await;
}

#[tokio::test]
async fn one_token_used_concurrently_enrolls_once() {
    let p = identity_plane(Duration::from_secs(3600)).await;
    let host = uuid::Uuid::new_v4();
    let token = p.token(&host, Duration::from_secs(60));
    let fp = p.fingerprint();
    let dirs: Vec<_> = (0..6).map(|_| workdir()).collect();
    let attempts = dirs
        .iter()
        .map(|d| p.try_enroll(&host, &token, &fp, d.path()));
    let results = futures::future::join_all(attempts).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 1, "one token enrolled {ok} times");
    p.plane.stop().await;
}

#[tokio::test]
async fn no_or_wrong_fingerprint_refuses_to_enroll_and_keeps_the_token() {
    let p = identity_plane(Duration::from_secs(3600)).await;
    let host = uuid::Uuid::new_v4();
    let work = workdir();
    let token = p.token(&host, Duration::from_secs(60));
    let e = err_text(p.try_enroll(&host, &token, "", work.path()).await);
    assert!(e.contains("--ca-fingerprint"), "{e}");
    let wrong = "ab".repeat(32);
    let e = err_text(p.try_enroll(&host, &token, &wrong, work.path()).await);
    assert!(e.contains("does not hold the pinned CA"), "{e}");
    assert!(
        !host_files(work.path()).cert.exists(),
        "files written on a refusal"
    );
    // Neither attempt sent the token: it still works.
    let fp = p.fingerprint().to_uppercase();
    p.try_enroll(&host, &token, &fp, work.path()).await.unwrap();
    p.plane.stop().await;
}

/// Enroll by hand: a CSR naming another host than the token's is refused.
#[tokio::test]
async fn csr_for_another_identity_is_refused() {
    let p = identity_plane(Duration::from_secs(3600)).await;
    let host = uuid::Uuid::new_v4();
    let forged = uuid::Uuid::new_v4();
    let token = p.token(&host, Duration::from_secs(60));
    let ca = rustls_pki_types::pem::PemObject::from_pem_file(&p.pki.server.ca).unwrap();
    let tls = csagent_tls::anonymous_client_config(vec![ca]).unwrap();
    let ep = csagent::endpoints::Endpoint::parse(&p.endpoint(), 8250).unwrap();
    let opts = csagent::dial::DialOptions {
        connect_timeout: Duration::from_secs(2),
        keepalive_interval: Duration::from_secs(5),
        keepalive_timeout: Duration::from_secs(5),
    };
    let channel = csagent::dial::dial(&ep, tls, &opts).await.unwrap();
    let mut client = EnrollmentClient::new(channel);
    let (csr, _key) = csagent_tls::pki::agent_csr(&forged).unwrap();
    let e = client
        .enroll(pb::EnrollRequest {
            host_uuid: host.to_string(),
            token: token.clone(),
            csr_pem: csr,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains(&forged.to_string()), "{e:?}");
    // Garbage is refused as well, and none of it spent the token.
    let e = client
        .enroll(pb::EnrollRequest {
            host_uuid: host.to_string(),
            token: token.clone(),
            csr_pem: "not a csr".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    let (csr, _key) = csagent_tls::pki::agent_csr(&host).unwrap();
    client
        .enroll(pb::EnrollRequest {
            host_uuid: host.to_string(),
            token,
            csr_pem: csr,
        })
        .await
        .unwrap();
    // A client without a certificate reaches Enrollment, never the link.
    p.plane.stop().await;
}

#[tokio::test]
async fn revoked_host_is_cut_off_refused_and_shown_revoked() {
    let p = identity_plane(Duration::from_secs(3600)).await;
    let host = uuid::Uuid::new_v4();
    let work = workdir();
    let files = p.enroll(&host, work.path()).await;
    let cfg = agent_config(&host, &files, &[p.endpoint()], work.path());
    // A real process: what it logs and what its status socket says are
    // the agent's own view, not the plane's bookkeeping.
    let mut agent = spawn_agent(&cfg, work.path(), "revoked");
    assert!(
        wait_for(Duration::from_secs(10), || is_up(&p.plane, &host)).await,
        "{}",
        agent.log_text()
    );

    let mut admin = csagent_mgmt::admin::connect(&p.admin).await.unwrap();
    let r = admin
        .revoke_host(pb::RevokeHostRequest {
            host_uuid: host.to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.newly_revoked && r.disconnected, "{r:?}");
    let revoked_at = std::time::Instant::now();
    // The agent's stream ends at once: its status leaves Connected naming
    // the revocation, and its log says so.
    let mut seen = None;
    while revoked_at.elapsed() < Duration::from_secs(3) {
        if let Ok((doc, _)) = csagent::status::server::fetch(&cfg.status.socket).await {
            if doc.link.state != csagent::status::state::LinkState::Connected
                && doc.link.last_error.contains("revoked")
            {
                seen = Some((revoked_at.elapsed(), doc.link.last_error));
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (after, why) = seen.expect("the agent's status never showed the revocation");
    assert!(
        after < Duration::from_secs(1),
        "the stream ended {after:?} after the revocation"
    );
    assert!(
        agent.log_text().contains("revoked by the plane"),
        "the agent's log does not say it: {}",
        agent.log_text()
    );
    eprintln!("agent saw the revocation after {after:?}: {why}");
    let connected = || host_summary(&p.plane, &host).is_some_and(|h| h.connected);
    // The agent keeps trying (backoff); none of its attempts gets in.
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(2) {
        assert!(!connected(), "revoked host got back in");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let hosts = admin
        .list_hosts(pb::ListHostsRequest {})
        .await
        .unwrap()
        .into_inner()
        .hosts;
    let h = hosts
        .iter()
        .find(|h| h.host_uuid == host.to_string())
        .unwrap();
    assert!(h.revoked, "{h:?}");
    // No new token for it, and the revocation survives a plane restart
    // (it is in the state directory).
    let e = admin
        .create_token(pb::CreateTokenRequest {
            host_uuid: host.to_string(),
            ttl_secs: 60,
        })
        .await
        .unwrap_err();
    assert!(e.message().contains("revoked"), "{e:?}");
    let reopened =
        csagent_mgmt::revocation::Revocations::open(p.state.path().join("state/revoked.json"))
            .unwrap();
    assert!(reopened.is_revoked(&host.to_string()));
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    agent.wait_exit(Duration::from_secs(10)).await;
    p.plane.stop().await;
}

#[tokio::test]
async fn key_with_loose_permissions_is_refused_at_start() {
    let p = identity_plane(Duration::from_secs(3600)).await;
    let host = uuid::Uuid::new_v4();
    let work = workdir();
    let files = p.enroll(&host, work.path()).await;
    std::fs::set_permissions(&files.key, std::fs::Permissions::from_mode(0o640)).unwrap();
    let cfg = agent_config(&host, &files, &[p.endpoint()], work.path());
    let e = csagent::agent::run(cfg, tokio_util::sync::CancellationToken::new())
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("chmod 600") && e.contains("agent.key"), "{e}");
    p.plane.stop().await;
}

#[tokio::test]
async fn check_says_the_clock_is_behind_for_a_certificate_not_yet_valid() {
    let pki = TestPki::new(&["localhost"]);
    let host = uuid::Uuid::new_v4();
    let now = time::OffsetDateTime::now_utc();
    let files = pki.agent_with(
        &host,
        csagent_tls::pki::Validity {
            not_before: now + time::Duration::hours(1),
            not_after: now + time::Duration::days(2),
        },
    );
    let work = workdir();
    let cfg = agent_config(&host, &files, &["127.0.0.1:1".into()], work.path());
    let path = work.path().join("agent.toml");
    std::fs::write(&path, toml::to_string(&cfg).unwrap()).unwrap();
    let checks = csagent::check::run(&path).await;
    let text = csagent::check::render(&checks);
    assert!(text.contains("clock is behind"), "{text}");
}
