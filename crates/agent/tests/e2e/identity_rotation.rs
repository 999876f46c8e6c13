//! Certificate renewal over the live stream and CA rotation, over real TLS,
//! with the agent under load: no command lost, no stream dropped, no host
//! out during a CA rotation.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use csagent::identity::credentials::next_path;
use csagent_proto::v1 as pb;
use csagent_testkit::identity::*;
use csagent_testkit::*;
use csagent_tls::TlsFiles;

fn peer(p: &IdPlane, host: &uuid::Uuid) -> String {
    host_summary(&p.plane, host)
        .map(|h| h.peer_address)
        .unwrap_or_default()
}

fn issuer(files: &TlsFiles) -> String {
    let pem = std::fs::read(&files.cert).unwrap();
    let der: rustls_pki_types::CertificateDer =
        rustls_pki_types::pem::PemObject::from_pem_slice(&pem).unwrap();
    let (_, x) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
    x.issuer().to_string()
}

/// Echo commands, 8 in flight at a time, until `stop`; returns (sent, ok).
fn load(
    plane: &csagent_mgmt::Plane,
    host: uuid::Uuid,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(usize, usize)> {
    let registry = Arc::clone(&plane.registry);
    tokio::spawn(async move {
        let sent = Arc::new(AtomicUsize::new(0));
        let ok = Arc::new(AtomicUsize::new(0));
        let workers = (0..8).map(|w| {
            let (registry, stop, sent, ok) = (
                Arc::clone(&registry),
                Arc::clone(&stop),
                Arc::clone(&sent),
                Arc::clone(&ok),
            );
            async move {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    sent.fetch_add(1, Ordering::Relaxed);
                    let payload = format!("w{w}-{i}");
                    let (_, mut rx) =
                        registry.send(&host.to_string(), cmd("", 0, echo(&payload, 5)));
                    let r = result_of(&mut rx, Duration::from_secs(20)).await;
                    if r.status == pb::CommandStatus::Ok as i32 {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
        futures::future::join_all(workers).await;
        (sent.load(Ordering::Relaxed), ok.load(Ordering::Relaxed))
    })
}

#[tokio::test]
async fn renewal_under_load_loses_no_command_and_keeps_the_stream() {
    let p = identity_plane(Duration::from_secs(6)).await;
    let host = uuid::Uuid::new_v4();
    let work = workdir();
    let files = p.enroll(&host, work.path()).await;
    let original = std::fs::read_to_string(&files.cert).unwrap();
    let mut cfg = agent_config(&host, &files, &[p.endpoint()], work.path());
    cfg.management.renew_at = 0.3;
    let agent = run_in_process(cfg);
    assert!(wait_for(Duration::from_secs(10), || is_up(&p.plane, &host)).await);
    let first_peer = peer(&p, &host);
    let stop = Arc::new(AtomicBool::new(false));
    let load = load(&p.plane, host, Arc::clone(&stop));

    // Renewed over the live stream: the new pair waits next to the old one,
    // which stays in place, and the stream is the same connection.
    let next = next_path(&files.cert);
    assert!(
        wait_for(Duration::from_secs(8), || next.exists()).await,
        "no renewal happened"
    );
    assert_eq!(std::fs::read_to_string(&files.cert).unwrap(), original);
    assert_eq!(peer(&p, &host), first_peer, "the stream was dropped");
    assert!(is_up(&p.plane, &host));

    // The next connection uses the new certificate, which then replaces the
    // old one; commands keep flowing across the reconnect.
    p.plane.registry.close(
        &host.to_string(),
        tonic::Status::unavailable("test: reconnect"),
    );
    assert!(
        wait_for(Duration::from_secs(10), || {
            is_up(&p.plane, &host) && peer(&p, &host) != first_peer
        })
        .await,
        "agent did not come back"
    );
    assert!(
        wait_for(Duration::from_secs(5), || std::fs::read_to_string(
            &files.cert
        )
        .unwrap()
            != original)
        .await,
        "the renewed certificate was not promoted after it connected"
    );
    let mode = {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(&files.key).unwrap().permissions().mode() & 0o777
    };
    assert_eq!(mode, 0o600);
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let (sent, ok) = load.await.unwrap();
    assert!(sent > 20, "too little load to prove anything: {sent}");
    assert_eq!(sent, ok, "commands lost or failed during renewal");
    agent.stop().await;
    p.plane.stop().await;
}

#[tokio::test]
async fn renewal_asking_for_another_identity_is_refused() {
    let p = identity_plane(Duration::from_secs(3600)).await;
    let host = uuid::Uuid::new_v4();
    let work = workdir();
    let files = p.enroll(&host, work.path()).await;
    // The plane signs only for the stream's verified identity.
    let other = uuid::Uuid::new_v4();
    let (csr, _) = csagent_tls::pki::agent_csr(&other).unwrap();
    let (tx, _rx) = tokio::sync::mpsc::channel(4);
    let msg = pb::AgentMessage {
        msg: Some(pb::agent_message::Msg::RenewCertificate(
            pb::RenewCertificate { csr_pem: csr },
        )),
    };
    let none =
        csagent_mgmt::identity_link::intercept(Some(p.authority()), &host.to_string(), &tx, msg);
    assert!(none.is_none());
    let mut rx = _rx;
    let Some(Ok(pb::PlaneMessage {
        msg: Some(pb::plane_message::Msg::CertificateIssued(c)),
    })) = rx.recv().await
    else {
        panic!("no answer")
    };
    assert!(c.cert_chain_pem.is_empty(), "{c:?}");
    assert!(c.refused.contains(&other.to_string()), "{c:?}");
    drop(files);
    p.plane.stop().await;
}

#[tokio::test]
async fn ca_rotation_with_agents_connected_drops_none() {
    let p = identity_plane(Duration::from_secs(3600)).await;
    let old_fp = p.fingerprint();
    let hosts: Vec<_> = (0..2).map(|_| uuid::Uuid::new_v4()).collect();
    let dirs: Vec<_> = hosts.iter().map(|_| workdir()).collect();
    let mut files = Vec::new();
    let mut agents = Vec::new();
    for (h, d) in hosts.iter().zip(&dirs) {
        let f = p.enroll(h, d.path()).await;
        agents.push(run_in_process(agent_config(
            h,
            &f,
            &[p.endpoint()],
            d.path(),
        )));
        files.push(f);
    }
    // Enrolled before the rotation, started after it: it knows only the old CA.
    let late_host = uuid::Uuid::new_v4();
    let late_dir = workdir();
    let late_files = p.enroll(&late_host, late_dir.path()).await;
    for h in &hosts {
        assert!(wait_for(Duration::from_secs(10), || is_up(&p.plane, h)).await);
    }
    let peers: Vec<_> = hosts.iter().map(|h| peer(&p, h)).collect();
    let old_issuer = issuer(&files[0]);

    let mut admin = csagent_mgmt::admin::connect(&p.admin).await.unwrap();
    let r = admin
        .rotate_ca(pb::RotateCaRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.notified_hosts, 2);
    assert_ne!(r.ca_fingerprint, old_fp);

    // Each connected agent stores the two-CA bundle and renews from the new
    // CA, on the same stream.
    for f in &files {
        let next = next_path(&f.cert);
        assert!(
            wait_for(Duration::from_secs(8), || next.exists()).await,
            "agent did not renew after the rotation"
        );
        let bundle = std::fs::read_to_string(&f.ca).unwrap();
        assert_eq!(csagent_tls::pki::fingerprints(&bundle).unwrap().len(), 2);
    }
    for (h, before) in hosts.iter().zip(&peers) {
        assert!(is_up(&p.plane, h));
        assert_eq!(&peer(&p, h), before, "a host dropped out during rotation");
    }
    // Reconnecting, they use the new bundle and the new CA's certificate.
    for h in &hosts {
        p.plane.registry.close(
            &h.to_string(),
            tonic::Status::unavailable("test: reconnect"),
        );
    }
    for (i, h) in hosts.iter().enumerate() {
        assert!(
            wait_for(Duration::from_secs(10), || is_up(&p.plane, h)
                && peer(&p, h) != peers[i])
            .await,
            "host did not reconnect after the rotation"
        );
        assert!(
            wait_for(Duration::from_secs(5), || issuer(&files[i]) != old_issuer).await,
            "still on a certificate from the old CA"
        );
    }
    // A host that missed the rotation still verifies the plane (the new CA
    // is served cross-signed by the old one) and receives the bundle.
    let late = run_in_process(agent_config(
        &late_host,
        &late_files,
        &[p.endpoint()],
        late_dir.path(),
    ));
    assert!(
        wait_for(Duration::from_secs(10), || is_up(&p.plane, &late_host)).await,
        "a host with only the old CA could not connect after the rotation"
    );
    assert!(
        wait_for(Duration::from_secs(5), || {
            let b = std::fs::read_to_string(&late_files.ca).unwrap();
            csagent_tls::pki::fingerprints(&b).unwrap().len() == 2
        })
        .await
    );
    // Enrollment pinned to the old CA still works during the overlap.
    let newcomer = uuid::Uuid::new_v4();
    let nd = workdir();
    let token = p.token(&newcomer, Duration::from_secs(60));
    p.try_enroll(&newcomer, &token, &old_fp, nd.path())
        .await
        .unwrap();
    late.stop().await;
    for a in agents {
        a.stop().await;
    }
    p.plane.stop().await;
}

fn bundle(pem: &str) -> pb::PlaneMessage {
    pb::PlaneMessage {
        msg: Some(pb::plane_message::Msg::TrustBundle(pb::TrustBundle {
            ca_bundle_pem: pem.to_string(),
            renew_now: false,
        })),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_trust_bundle_changes_nothing_on_disk_and_the_host_restarts_fine() {
    let p = identity_plane(Duration::from_secs(3600)).await;
    let host = uuid::Uuid::new_v4();
    let work = workdir();
    let files = p.enroll(&host, work.path()).await;
    let cfg = agent_config(&host, &files, &[p.endpoint()], work.path());
    let agent = run_in_process(cfg.clone());
    assert!(wait_for(Duration::from_secs(10), || is_up(&p.plane, &host)).await);
    let current = std::fs::read_to_string(&files.ca).unwrap();
    let leaf = std::fs::read_to_string(&files.cert).unwrap();
    let stranger = csagent_tls::pki::Ca::generate(
        "csat-stranger",
        csagent_tls::pki::Validity::for_lifetime(Duration::from_secs(3600)),
    )
    .unwrap()
    .signing_cert_pem()
    .unwrap();
    let garbage = "-----BEGIN CERTIFICATE-----\nAAAAAAAA\n-----END CERTIFICATE-----\n";
    for bad in [
        format!("{current}{garbage}"),
        format!("{current}{leaf}"),
        stranger.clone(),
    ] {
        assert_eq!(p.plane.registry.broadcast(&bundle(&bad)), 1);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            std::fs::read_to_string(&files.ca).unwrap(),
            current,
            "a refused bundle reached ca_file"
        );
    }
    // The refusals left nothing that would lock the host out: it restarts
    // and registers with what is on disk.
    agent.stop().await;
    let agent = run_in_process(cfg);
    assert!(wait_for(Duration::from_secs(10), || is_up(&p.plane, &host)).await);
    // A good bundle (the current CA and a new one) is stored.
    let good = format!("{current}{stranger}");
    p.plane.registry.broadcast(&bundle(&good));
    assert!(
        wait_for(Duration::from_secs(5), || std::fs::read_to_string(
            &files.ca
        )
        .unwrap()
            == good)
        .await,
        "a good bundle was not stored"
    );
    agent.stop().await;
    p.plane.stop().await;
}

const ROTATED: [&str; 4] = ["ca.key", "ca.pem", "server.key", "server.pem"];

fn authority(tls_dir: &std::path::Path, state: &std::path::Path) -> csagent_mgmt::Authority {
    csagent_mgmt::Authority::open(csagent_mgmt::IdentityConfig {
        tls_dir: tls_dir.to_path_buf(),
        state_dir: state.to_path_buf(),
        leaf_lifetime: Duration::from_secs(3600),
    })
    .unwrap()
}

fn leftovers(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".next") || n == "rotation.commit")
        .collect()
}

/// Copies `files` from `from` into `dir` as `<file>.next`, as a rotation
/// stages them.
fn stage(from: &std::path::Path, dir: &std::path::Path, files: &[&str]) {
    for f in files {
        std::fs::copy(from.join(f), dir.join(format!("{f}.next"))).unwrap();
    }
}

/// A plane starting on `dir` serves the CA `fingerprint` and has cleared
/// every staged file.
fn restarts_on(dir: &std::path::Path, state: &std::path::Path, fingerprint: &str, why: &str) {
    let a = authority(dir, state);
    assert_eq!(a.fingerprint().unwrap(), fingerprint, "{why}");
    assert!(leftovers(dir).is_empty(), "{:?}", leftovers(dir));
}

// A crash anywhere in a CA rotation: before its commit the plane restarts
// on the old CA, after it on the new one; never on a CA key that does not
// match the bundle, or a server key that does not match its certificate.
#[tokio::test]
async fn a_ca_rotation_cut_short_by_a_crash_is_undone_or_finished_at_the_next_start() {
    let state = workdir();
    // The set a finished rotation makes, from a copy of the same PKI.
    let pki = TestPki::new(&["localhost"]);
    let rotated = tempfile::tempdir().unwrap();
    for f in ROTATED {
        std::fs::copy(pki.dir.path().join(f), rotated.path().join(f)).unwrap();
    }
    let old_fp = authority(pki.dir.path(), state.path())
        .fingerprint()
        .unwrap();
    let new_fp = authority(rotated.path(), state.path()).rotate().unwrap();
    assert_ne!(old_fp, new_fp);

    let (dir, from) = (pki.dir.path(), rotated.path());
    // Crash before the commit: half the new files staged.
    stage(from, dir, &ROTATED[..2]);
    restarts_on(
        dir,
        state.path(),
        &old_fp,
        "an uncommitted rotation took effect",
    );

    // Crash after the commit, with two of the four files already moved.
    stage(from, dir, &ROTATED);
    std::fs::write(dir.join("rotation.commit"), b"staged\n").unwrap();
    for f in &ROTATED[..2] {
        std::fs::rename(dir.join(format!("{f}.next")), dir.join(f)).unwrap();
    }
    restarts_on(dir, state.path(), &new_fp, "a committed rotation was lost");
    // The server pair on disk matches: a host of the new CA is served.
    for f in ROTATED {
        assert_eq!(
            std::fs::read(pki.dir.path().join(f)).unwrap(),
            std::fs::read(rotated.path().join(f)).unwrap(),
            "{f} differs from the finished rotation's"
        );
    }
}
