//! Volumes on a real libvirt dir pool (qemu:///system) with real qemu-img:
//! blank, linked clone, full copy, resize, delete, info; bad input changes
//! nothing; concurrent creates yield one file; cancel/timeout kill qemu-img
//! and leave no partial file.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use csagent_storage::qemu_img::RunCtl;
use csagent_storage::{
    Bytes, CallOpts, CloneMode, CreateFromTemplate, CreateVolume, ErrorKind, ImageFormat, PoolName,
    ProgressSink, QemuImg, ResizeVolume, StorageError, VolumeName,
};
use csagent_testkit::storage::*;
use tokio_util::sync::CancellationToken;

const MIB: u64 = 1 << 20;

fn create(pool: &TestPool, name: &str, format: ImageFormat, size: u64) -> CreateVolume {
    CreateVolume {
        pool: pool.name.clone(),
        name: vol(name),
        format,
        size: Bytes(size),
    }
}

#[tokio::test]
async fn blank_volumes_info_resize_delete() {
    let p = TestPool::new("blank").await;
    let s = &p.storage;
    let q = s
        .create_volume(
            create(&p, "root.qcow2", ImageFormat::Qcow2, 64 * MIB),
            CallOpts::default(),
        )
        .await
        .unwrap();
    assert_eq!(
        (q.format.as_str(), q.virtual_size),
        ("qcow2", Bytes(64 * MIB))
    );
    assert!(q.backing_chain.is_empty());
    let r = s
        .create_volume(
            create(&p, "data.raw", ImageFormat::Raw, 32 * MIB),
            CallOpts::default(),
        )
        .await
        .unwrap();
    assert_eq!(r.format, "raw");
    assert_eq!(info_json(&p.dir.join("data.raw"))["virtual-size"], 32 * MIB);

    // Grow works; shrink only when asked for.
    let resize = |size, allow_shrink| ResizeVolume {
        pool: p.name.clone(),
        name: vol("root.qcow2"),
        size: Bytes(size),
        allow_shrink,
    };
    let grown = s
        .resize_volume(resize(128 * MIB, false), CallOpts::default())
        .await
        .unwrap();
    assert_eq!(grown.virtual_size, Bytes(128 * MIB));
    let e = s
        .resize_volume(resize(16 * MIB, false), CallOpts::default())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    assert_eq!(
        info_json(&p.dir.join("root.qcow2"))["virtual-size"],
        128 * MIB
    );
    let shrunk = s
        .resize_volume(resize(16 * MIB, true), CallOpts::default())
        .await
        .unwrap();
    assert_eq!(shrunk.virtual_size, Bytes(16 * MIB));

    let info = s
        .volume_info(&p.name, &vol("root.qcow2"), CallOpts::default())
        .await
        .unwrap();
    assert_eq!(info.virtual_size, Bytes(16 * MIB));
    assert!(info.actual_size.0 > 0);

    s.delete_volume(&p.name, &vol("root.qcow2"), CallOpts::default())
        .await
        .unwrap();
    let e = s
        .delete_volume(&p.name, &vol("root.qcow2"), CallOpts::default())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert_eq!(p.files(), vec!["data.raw"]);
}

#[tokio::test]
async fn bad_input_changes_nothing() {
    let p = TestPool::new("badinput").await;
    let s = &p.storage;
    for bad in [
        "",
        "../etc/passwd",
        "a/b",
        "..",
        "nul\0byte",
        &"x".repeat(300),
    ] {
        let e = VolumeName::new(bad).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{bad:?}");
    }
    assert!(ImageFormat::parse("vhdx").is_err());
    let e = s
        .create_volume(
            create(&p, "zero", ImageFormat::Qcow2, 0),
            CallOpts::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    let e = s
        .create_volume(
            create(&p, "huge", ImageFormat::Qcow2, 1 << 60),
            CallOpts::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InsufficientCapacity, "{e}");
    assert!(e.to_string().contains("Insufficient capacity"), "{e}");
    let mut req = create(&p, "x", ImageFormat::Raw, MIB);
    req.pool = PoolName::new("csat-sto-no-such-pool").unwrap();
    let e = s.create_volume(req, CallOpts::default()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    // A symlink planted in the pool must not let a command reach outside.
    std::os::unix::fs::symlink("/etc/hostname", p.dir.join("link")).unwrap();
    let e = s
        .volume_info(&p.name, &vol("link"), CallOpts::default())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    let e = s
        .delete_volume(&p.name, &vol("link"), CallOpts::default())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    assert_eq!(p.files(), vec!["link"]);
}

#[tokio::test]
async fn linked_clone_and_full_copy() {
    let p = TestPool::new("clone").await;
    let s = &p.storage;
    random_file(&p.dir.join("tpl.raw"), 4 * MIB, 7);
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        p.dir.join("tpl.raw").to_str().unwrap(),
        p.dir.join("tpl.qcow2").to_str().unwrap(),
    ]);

    let linked = CreateFromTemplate {
        pool: p.name.clone(),
        name: vol("vm1-root"),
        template: vol("tpl.qcow2"),
        mode: Some(CloneMode::Linked),
        size: Some(Bytes(8 * MIB)),
    };
    let v = s
        .create_volume_from_template(linked, CallOpts::default(), None)
        .await
        .unwrap();
    assert_eq!(v.virtual_size, Bytes(8 * MIB));
    assert_eq!(v.backing_chain.len(), 1);
    let j = info_json(&p.dir.join("vm1-root"));
    assert_eq!(
        j["backing-filename-format"], "qcow2",
        "backing format must be explicit: {j}"
    );
    assert_eq!(
        j["full-backing-filename"],
        p.dir.join("tpl.qcow2").to_str().unwrap()
    );
    let chain = s
        .volume_info(&p.name, &vol("vm1-root"), CallOpts::default())
        .await
        .unwrap();
    assert_eq!(chain.backing_chain[0].format, "qcow2");

    // Raw template, linked: backing format raw, stated.
    let linked_raw = CreateFromTemplate {
        pool: p.name.clone(),
        name: vol("vm2-root"),
        template: vol("tpl.raw"),
        mode: Some(CloneMode::Linked),
        size: None,
    };
    s.create_volume_from_template(linked_raw, CallOpts::default(), None)
        .await
        .unwrap();
    assert_eq!(
        info_json(&p.dir.join("vm2-root"))["backing-filename-format"],
        "raw"
    );

    let (sink, seen) = progress_sink();
    let full = CreateFromTemplate {
        pool: p.name.clone(),
        name: vol("vm3-root"),
        template: vol("tpl.qcow2"),
        mode: Some(CloneMode::Full {
            format: ImageFormat::Qcow2,
        }),
        size: Some(Bytes(6 * MIB)),
    };
    let v = s
        .create_volume_from_template(full, CallOpts::default(), Some(sink))
        .await
        .unwrap();
    assert!(v.backing_chain.is_empty());
    assert_eq!(v.virtual_size, Bytes(6 * MIB));
    assert!(
        !seen.lock().unwrap().is_empty(),
        "full copy reported no progress"
    );
    qemu_img(&[
        "compare",
        "-f",
        "qcow2",
        "-F",
        "raw",
        p.dir.join("vm3-root").to_str().unwrap(),
        p.dir.join("tpl.raw").to_str().unwrap(),
    ]);

    // Smaller than the template: refused, nothing made.
    let small = CreateFromTemplate {
        pool: p.name.clone(),
        name: vol("vm4-root"),
        template: vol("tpl.qcow2"),
        mode: Some(CloneMode::Linked),
        size: Some(Bytes(MIB)),
    };
    let e = s
        .create_volume_from_template(small, CallOpts::default(), None)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);

    // The template is in use by a linked clone: delete refused.
    let e = s
        .delete_volume(&p.name, &vol("tpl.qcow2"), CallOpts::default())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    assert_eq!(
        p.files(),
        vec!["tpl.qcow2", "tpl.raw", "vm1-root", "vm2-root", "vm3-root"]
    );
}

#[tokio::test]
async fn concurrent_creates_yield_one_file() {
    let p = TestPool::new("race").await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let s = p.storage.clone();
        let req = create(&p, "same", ImageFormat::Qcow2, 16 * MIB);
        tasks.push(tokio::spawn(async move {
            s.create_volume(req, CallOpts::default()).await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{e}"),
        }
    }
    assert_eq!(ok, 1);
    assert_eq!(p.files(), vec!["same"]);
    qemu_img(&["check", "-f", "qcow2", p.dir.join("same").to_str().unwrap()]);

    // Two Storage instances (as two agents would be) racing: link(2) decides.
    let s2 = storage();
    let (a, b) = tokio::join!(
        p.storage.create_volume(
            create(&p, "other", ImageFormat::Raw, MIB),
            CallOpts::default()
        ),
        s2.create_volume(
            create(&p, "other", ImageFormat::Raw, MIB),
            CallOpts::default()
        ),
    );
    assert!(a.is_ok() ^ b.is_ok(), "{a:?} {b:?}");
    assert_eq!(p.files(), vec!["other", "same"]);
}

#[tokio::test]
async fn cancel_during_full_copy_kills_qemu_img_and_removes_output() {
    let p = TestPool::new("cancel").await;
    random_file(&p.dir.join("big.raw"), 192 * MIB, 11);
    let token = CancellationToken::new();
    let t2 = token.clone();
    let mid = Arc::new(AtomicBool::new(false));
    let mid2 = mid.clone();
    let sink: ProgressSink = Arc::new(move |pr| {
        if pr.done.0 > 0 && pr.done < pr.total {
            mid2.store(true, Ordering::SeqCst);
            t2.cancel();
        }
    });
    let req = CreateFromTemplate {
        pool: p.name.clone(),
        name: vol("copy"),
        template: vol("big.raw"),
        mode: Some(CloneMode::Full {
            format: ImageFormat::Qcow2,
        }),
        size: None,
    };
    let r = p
        .storage
        .create_volume_from_template(req, CallOpts::new(token), Some(sink))
        .await;
    if !mid.load(Ordering::SeqCst) {
        csagent_testkit::skip!("convert finished before any mid-copy progress; nothing to cancel");
        return;
    }
    let e = r.unwrap_err();
    assert!(
        matches!(
            e,
            StorageError::Cancelled {
                step: "convert",
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(p.files(), vec!["big.raw"], "partial output left behind");
    assert!(
        qemu_img_pids(p.dir.to_str().unwrap()).is_empty(),
        "qemu-img still running"
    );
}

#[tokio::test]
async fn timeout_kills_qemu_img_and_names_the_step() {
    let dir = tempfile::Builder::new()
        .prefix("csat-sto-fifo-")
        .tempdir()
        .unwrap();
    let fifo = dir.path().join("csat-sto-fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    // qemu-img blocks forever opening a FIFO nobody writes to.
    let ctl = RunCtl::new(Duration::from_millis(300), CancellationToken::new());
    let e = QemuImg::default()
        .info(&fifo, Some(ImageFormat::Raw), false, &ctl)
        .await
        .unwrap_err();
    assert!(
        matches!(e, StorageError::Timeout { step: "info", .. }),
        "{e}"
    );
    assert_eq!(e.kind(), ErrorKind::DeadlineExceeded);
    assert!(e.to_string().contains("timed out"), "{e}");
    assert!(
        qemu_img_pids("csat-sto-fifo").is_empty(),
        "qemu-img still running"
    );

    // Through Storage: a whole operation's budget, configured per call.
    let p = TestPool::new("timeout").await;
    random_file(&p.dir.join("big.raw"), 192 * MIB, 5);
    let req = CreateFromTemplate {
        pool: p.name.clone(),
        name: vol("copy"),
        template: vol("big.raw"),
        mode: Some(CloneMode::Full {
            format: ImageFormat::Qcow2,
        }),
        size: None,
    };
    let opts = CallOpts::default().with_timeout(Duration::from_millis(1));
    let e = p
        .storage
        .create_volume_from_template(req, opts, None)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::DeadlineExceeded, "{e}");
    assert_eq!(p.files(), vec!["big.raw"]);
}

#[tokio::test]
async fn sweep_removes_only_leftover_temp_files() {
    let p = TestPool::new("sweep").await;
    std::fs::write(p.dir.join(".vm-root.part-0123456789abcdef"), b"half").unwrap();
    std::fs::write(p.dir.join("keep"), b"volume").unwrap();
    std::fs::write(p.dir.join(".operator-note"), b"not ours").unwrap();
    let removed = p
        .storage
        .sweep_partial_files(&p.name, CallOpts::default())
        .await
        .unwrap();
    assert_eq!(removed, vec![p.dir.join(".vm-root.part-0123456789abcdef")]);
    assert_eq!(p.files(), vec![".operator-note", "keep"]);
}
