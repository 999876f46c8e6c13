//! Template copy into a real pool: from a local path and from HTTP on
//! 127.0.0.1 with progress; checksum verified (mismatch: copy removed);
//! non-images and qcow2 with a backing file outside the pool refused; disk
//! full on a small tmpfs gives a clear error and leaves no partial file.

use std::sync::Arc;

use csagent_storage::template::ChecksumAlgo;
use csagent_storage::{
    Bytes, CallOpts, Checksum, CloneMode, CopyTemplate, CreateFromTemplate, ErrorKind, ImageFormat,
    Progress, StorageError, TemplateSource, VolumeInfo,
};
use csagent_testkit::storage::*;
use sha2::{Digest, Sha256, Sha512};

const MIB: u64 = 1 << 20;

fn copy(
    p: &TestPool,
    name: &str,
    source: TemplateSource,
    format: ImageFormat,
    checksum: Option<Checksum>,
) -> CopyTemplate {
    CopyTemplate {
        pool: p.name.clone(),
        name: vol(name),
        source,
        format,
        // These tests are about copying; trust is tested on its own.
        unverified: checksum.is_none(),
        checksum,
    }
}

/// Copies a template with the default options and no progress sink.
async fn copy_to(
    p: &TestPool,
    name: &str,
    source: TemplateSource,
    format: ImageFormat,
    checksum: Option<Checksum>,
) -> Result<VolumeInfo, StorageError> {
    let req = copy(p, name, source, format, checksum);
    p.storage
        .copy_template(req, CallOpts::default(), None)
        .await
}

#[tokio::test]
async fn http_copy_with_progress_and_sha256() {
    let p = TestPool::new("http").await;
    let src = tempfile::Builder::new()
        .prefix("csat-sto-src-")
        .tempdir()
        .unwrap();
    random_file(&src.path().join("t.raw"), 20 * MIB, 3);
    let qcow = src.path().join("t.qcow2");
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        src.path().join("t.raw").to_str().unwrap(),
        qcow.to_str().unwrap(),
    ]);
    let body = std::fs::read(&qcow).unwrap();
    let sha = hex::encode(Sha256::digest(&body));
    let len = body.len() as u64;
    let srv = HttpServer::serve(Arc::new(body), false).await;
    let (sink, seen) = progress_sink();
    let c = Checksum {
        algo: ChecksumAlgo::Sha256,
        hex: sha.to_uppercase(),
    };
    let v = p
        .storage
        .copy_template(
            copy(
                &p,
                "tpl",
                TemplateSource::Url(srv.url.clone()),
                ImageFormat::Qcow2,
                Some(c),
            ),
            CallOpts::default(),
            Some(sink),
        )
        .await
        .unwrap();
    assert_eq!(
        (v.format.as_str(), v.virtual_size),
        ("qcow2", Bytes(20 * MIB))
    );
    let seen = seen.lock().unwrap().clone();
    assert!(seen.len() >= 2, "progress: {seen:?}");
    assert!(seen.windows(2).all(|w| w[0].done <= w[1].done));
    assert_eq!(
        seen.last().copied(),
        Some(Progress {
            done: Bytes(len),
            total: Bytes(len)
        })
    );
    assert_eq!(p.files(), vec!["tpl"]);

    // 404 is NotFound; an existing name is AlreadyExists; nothing changes.
    let bad = srv.url.replace("csat-sto-template.img", "nope");
    let e = copy_to(
        &p,
        "tpl2",
        TemplateSource::Url(bad),
        ImageFormat::Qcow2,
        None,
    )
    .await
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    let e = copy_to(
        &p,
        "tpl",
        TemplateSource::Url(srv.url.clone()),
        ImageFormat::Qcow2,
        None,
    )
    .await
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{e}");
    let e = copy_to(
        &p,
        "tpl3",
        TemplateSource::Url("file:///etc/passwd".into()),
        ImageFormat::Raw,
        None,
    )
    .await
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    assert_eq!(p.files(), vec!["tpl"]);
}

#[tokio::test]
async fn local_copy_sha512_and_mismatch_removes_copy() {
    let p = TestPool::new("local").await;
    let src = tempfile::Builder::new()
        .prefix("csat-sto-src-")
        .tempdir()
        .unwrap();
    let raw = src.path().join("t.raw");
    random_file(&raw, 3 * MIB, 9);
    let sha512 = hex::encode(Sha512::digest(std::fs::read(&raw).unwrap()));
    let good = Checksum {
        algo: ChecksumAlgo::Sha512,
        hex: sha512,
    };
    copy_to(
        &p,
        "ok",
        TemplateSource::Path(raw.clone()),
        ImageFormat::Raw,
        Some(good),
    )
    .await
    .unwrap();
    let wrong = Checksum {
        algo: ChecksumAlgo::Sha256,
        hex: "0".repeat(64),
    };
    let e = copy_to(
        &p,
        "bad",
        TemplateSource::Path(raw.clone()),
        ImageFormat::Raw,
        Some(wrong),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, StorageError::ChecksumMismatch { .. }), "{e}");
    let malformed = Checksum {
        algo: ChecksumAlgo::Sha512,
        hex: "xyz".into(),
    };
    let e = copy_to(
        &p,
        "bad",
        TemplateSource::Path(raw),
        ImageFormat::Raw,
        Some(malformed),
    )
    .await
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    // Host files outside the secondary-storage roots are not templates.
    let e = copy_to(
        &p,
        "shadow",
        TemplateSource::Path("/etc/hostname".into()),
        ImageFormat::Raw,
        None,
    )
    .await
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    assert!(
        e.to_string()
            .contains("outside the secondary-storage roots"),
        "{e}"
    );
    assert_eq!(p.files(), vec!["ok"]);
}

#[tokio::test]
async fn refuses_non_images_and_backing_outside_pool() {
    let p = TestPool::new("refuse").await;
    let src = tempfile::Builder::new()
        .prefix("csat-sto-src-")
        .tempdir()
        .unwrap();
    let text = src.path().join("notes.txt");
    std::fs::write(&text, b"this is not a disk image\n").unwrap();
    for fmt in [ImageFormat::Raw, ImageFormat::Qcow2] {
        let e = copy_to(&p, "t", TemplateSource::Path(text.clone()), fmt, None)
            .await
            .unwrap_err();
        assert!(matches!(e, StorageError::BadImage { .. }), "{fmt:?}: {e}");
    }
    // qcow2 whose backing file is a host file outside the pool.
    let outside = src.path().join("host-secret.raw");
    random_file(&outside, MIB, 1);
    let evil = src.path().join("evil.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        outside.to_str().unwrap(),
        "-F",
        "raw",
        evil.to_str().unwrap(),
    ]);
    let e = copy_to(
        &p,
        "t",
        TemplateSource::Path(evil.clone()),
        ImageFormat::Qcow2,
        None,
    )
    .await
    .unwrap_err();
    assert!(matches!(e, StorageError::BadImage { .. }), "{e}");
    assert!(e.to_string().contains("outside the pool"), "{e}");
    // Also via a relative "../" backing name.
    let rel = src.path().join("rel.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-u",
        "-b",
        "../../etc/hostname",
        "-F",
        "raw",
        rel.to_str().unwrap(),
        "1M",
    ]);
    let e = copy_to(&p, "t", TemplateSource::Path(rel), ImageFormat::Qcow2, None)
        .await
        .unwrap_err();
    assert!(matches!(e, StorageError::BadImage { .. }), "{e}");
    // Declared raw but is qcow2: refused too.
    let e = copy_to(&p, "t", TemplateSource::Path(evil), ImageFormat::Raw, None)
        .await
        .unwrap_err();
    assert!(matches!(e, StorageError::BadImage { .. }), "{e}");
    assert!(p.files().is_empty(), "{:?}", p.files());
}

#[tokio::test]
async fn disk_full_leaves_no_partial_file() {
    let storage = storage();
    let mp = MountPool::add(&storage, "full", 8).await;
    let (fs, pool) = (&mp.fs, mp.name.clone());
    let body: Vec<u8> = {
        let d = tempfile::Builder::new()
            .prefix("csat-sto-src-")
            .tempdir()
            .unwrap();
        random_file(&d.path().join("b"), 12 * MIB, 4);
        std::fs::read(d.path().join("b")).unwrap()
    };
    let req = |srv: &HttpServer, n: &str| CopyTemplate {
        pool: pool.clone(),
        name: vol(n),
        source: TemplateSource::Url(srv.url.clone()),
        format: ImageFormat::Raw,
        checksum: None,
        unverified: true,
    };
    // Announced length: refused up front as Insufficient capacity.
    let srv = HttpServer::serve(Arc::new(body.clone()), false).await;
    let e = storage
        .copy_template(req(&srv, "t1"), CallOpts::default(), None)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InsufficientCapacity, "{e}");
    // Unannounced (chunked): the disk fills while writing.
    let srv = HttpServer::serve(Arc::new(body), true).await;
    let e = storage
        .copy_template(req(&srv, "t2"), CallOpts::default(), None)
        .await
        .unwrap_err();
    assert!(matches!(e, StorageError::DiskFull { .. }), "{e}");
    assert!(e.to_string().contains("No space left"), "{e}");
    assert_eq!(e.kind(), ErrorKind::InsufficientCapacity);
    assert!(list(fs.path()).is_empty(), "{:?}", list(fs.path()));

    // qemu-img convert filling the disk: two full copies racing for room
    // for one. Whichever fails (at the capacity check or with ENOSPC while
    // writing) fails cleanly, and no partial file is left.
    random_file(&fs.path().join("tpl.raw"), 3 * MIB, 8);
    let full = |n: &str| CreateFromTemplate {
        pool: pool.clone(),
        name: vol(n),
        template: vol("tpl.raw"),
        mode: Some(CloneMode::Full {
            format: ImageFormat::Raw,
        }),
        size: None,
    };
    let (a, b) = tokio::join!(
        storage.create_volume_from_template(full("c1"), CallOpts::default(), None),
        storage.create_volume_from_template(full("c2"), CallOpts::default(), None),
    );
    let mut expect = vec!["tpl.raw".to_string()];
    for (n, r) in [("c1", &a), ("c2", &b)] {
        match r {
            Ok(_) => expect.push(n.to_string()),
            Err(e) => {
                println!("{n}: {e}");
                assert_eq!(e.kind(), ErrorKind::InsufficientCapacity, "{e}")
            }
        }
    }
    assert!(a.is_err() || b.is_err(), "both copies fit in 8 MiB?");
    expect.sort();
    assert_eq!(list(fs.path()), expect);
    storage
        .remove_pool(&pool, CallOpts::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn download_without_length_stops_before_pool_is_full() {
    // 65 MiB pool: after 64 MiB only 1 MiB is left, under the 2 % reserve.
    let storage = storage();
    let mp = MountPool::add(&storage, "reserve", 65).await;
    let (fs, pool) = (&mp.fs, mp.name.clone());
    let srv = HttpServer::serve(Arc::new(vec![0x5a; 80 * MIB as usize]), true).await;
    let req = CopyTemplate {
        pool: pool.clone(),
        name: vol("big"),
        source: TemplateSource::Url(srv.url.clone()),
        format: ImageFormat::Raw,
        checksum: None,
        unverified: true,
    };
    let e = storage
        .copy_template(req, CallOpts::default(), None)
        .await
        .unwrap_err();
    assert!(
        matches!(e, StorageError::InsufficientCapacity { .. }),
        "{e}"
    );
    assert!(list(fs.path()).is_empty(), "{:?}", list(fs.path()));
    storage
        .remove_pool(&pool, CallOpts::default())
        .await
        .unwrap();
}

// A template server must not send the agent elsewhere: a redirect to
// another host (an internal address, say) is refused and never followed,
// and nothing is left in the pool.
#[tokio::test]
async fn a_redirect_away_from_the_template_host_is_refused_unfollowed() {
    let p = TestPool::new("redirect").await;
    let target = HttpServer::start(Answer::Redirect("http://127.0.0.1:9/never".into()), None).await;
    let to = target.url.replace("127.0.0.1", "localhost");
    let first = HttpServer::start(Answer::Redirect(to), None).await;
    let e = copy_to(
        &p,
        "moved",
        TemplateSource::Url(first.url.clone()),
        ImageFormat::Raw,
        None,
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("redirect to"), "{e}");
    assert!(e.to_string().contains("refused"), "{e}");
    assert_eq!(target.hits(), 0, "the redirect was followed");
    assert!(p.files().is_empty(), "{:?}", p.files());
}

/// A storage whose https downloads also trust `ca_file`.
fn trusting(ca_file: Option<std::path::PathBuf>) -> csagent_storage::Storage {
    csagent_storage::Storage::new(
        csagent_storage::StorageConfig {
            template_ca_file: ca_file,
            ..Default::default()
        },
        csagent_libvirt::Hypervisor::start(URI, std::time::Duration::from_secs(30)),
    )
}

async fn copy_with(
    s: &csagent_storage::Storage,
    p: &TestPool,
    name: &str,
    url: &str,
    sha: &str,
) -> Result<VolumeInfo, StorageError> {
    let c = Checksum {
        algo: ChecksumAlgo::Sha256,
        hex: sha.into(),
    };
    let req = copy(
        p,
        name,
        TemplateSource::Url(url.into()),
        ImageFormat::Qcow2,
        Some(c),
    );
    s.copy_template(req, CallOpts::default(), None).await
}

// Templates over https from a server whose certificate a test CA issued:
// trusted only through [storage] template_ca_file; redirects followed
// only https to https on the same host.
#[tokio::test]
async fn https_templates_trust_the_configured_ca_and_redirect_only_to_https_on_the_same_host() {
    let p = TestPool::new("https").await;
    let src = tempfile::Builder::new()
        .prefix("csat-sto-src-")
        .tempdir()
        .unwrap();
    let qcow = src.path().join("t.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", qcow.to_str().unwrap(), "8M"]);
    let body = std::fs::read(&qcow).unwrap();
    let sha = hex::encode(Sha256::digest(&body));
    let ca = csagent_tls::pki::Ca::generate(
        "csat-sto-ca",
        csagent_tls::pki::Validity::for_lifetime(std::time::Duration::from_secs(3600)),
    )
    .unwrap();
    let ca_file = src.path().join("ca.pem");
    std::fs::write(&ca_file, ca.signing_cert_pem().unwrap()).unwrap();
    let tls = https_config(&ca);
    let file = Answer::File {
        body: Arc::new(body.clone()),
        chunked: false,
    };
    let srv = HttpServer::start(file, Some(Arc::clone(&tls))).await;

    // Without the CA the server's certificate is refused, nothing is kept.
    let e = copy_with(&trusting(None), &p, "untrusted", &srv.url, &sha)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(e.to_string().to_lowercase().contains("certificate"), "{e}");
    assert!(p.files().is_empty(), "{:?}", p.files());

    let s = trusting(Some(ca_file.clone()));
    let v = copy_with(&s, &p, "tpl", &srv.url, &sha).await.unwrap();
    assert_eq!(std::fs::read(&v.path).unwrap(), body);
    assert!(!v.unverified);

    // https -> https on the same host is followed.
    let moved = HttpServer::start(Answer::Redirect(srv.url.clone()), Some(Arc::clone(&tls))).await;
    copy_with(&s, &p, "moved", &moved.url, &sha).await.unwrap();

    // https -> http, and https -> https on another host name, are not.
    let plain = HttpServer::serve(Arc::new(body.clone()), false).await;
    let other_host = srv.url.replace("127.0.0.1", "localhost");
    for (name, to, target_hits) in [
        ("to-http", plain.url.clone(), &plain.hits),
        ("to-other-host", other_host, &srv.hits),
    ] {
        let before = target_hits.load(std::sync::atomic::Ordering::SeqCst);
        let hop = HttpServer::start(Answer::Redirect(to.clone()), Some(Arc::clone(&tls))).await;
        let e = copy_with(&s, &p, name, &hop.url, &sha).await.unwrap_err();
        assert!(e.to_string().contains("refused"), "{name}: {e}");
        let after = target_hits.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(after, before, "{name}: the redirect to {to} was followed");
    }

    // A bundle that holds no certificate fails the download, naming it.
    let empty = src.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").unwrap();
    let e = copy_with(&trusting(Some(empty.clone())), &p, "bad-ca", &srv.url, &sha)
        .await
        .unwrap_err();
    assert!(e.to_string().contains(empty.to_str().unwrap()), "{e}");
    let mut left = p.files();
    left.retain(|f| f != "tpl" && f != "moved");
    assert!(left.is_empty(), "{left:?}");
}
