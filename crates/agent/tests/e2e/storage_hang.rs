//! A pool whose filesystem hangs (testkit's FUSE server that never answers,
//! mounted over a real libvirt dir pool): volume commands on it fail with a
//! clear UNAVAILABLE at `fs_timeout_secs`, while the agent, on two async
//! workers like a small host, keeps its heartbeats on time.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use csagent_proto::v1 as pb;
use csagent_testkit::fuse::HungMount;
use csagent_testkit::skip;
use csagent_testkit::*;

use pb::command::Body as B;

fn ok(r: &pb::CommandResult) {
    assert_eq!(r.status, pb::CommandStatus::Ok as i32, "{r:?}");
}

/// (when sampled, heartbeat_seq), in order.
type Samples = Arc<Mutex<Vec<(Instant, u64)>>>;

/// Samples the host's heartbeat sequence every 20 ms until aborted.
fn sample_heartbeats(
    registry: Arc<csagent_mgmt::Registry>,
    host: uuid::Uuid,
) -> (Samples, tokio::task::JoinHandle<()>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let out = Arc::clone(&seen);
    let task = tokio::spawn(async move {
        loop {
            let seq = registry
                .list()
                .into_iter()
                .find(|h| h.host_uuid == host.to_string())
                .map(|h| h.heartbeat_seq);
            if let Some(seq) = seq {
                out.lock().unwrap().push((Instant::now(), seq));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    (seen, task)
}

/// The longest time the heartbeat sequence stood still.
fn longest_silence(samples: &[(Instant, u64)]) -> Duration {
    let mut longest = Duration::ZERO;
    let mut since = samples.first().map(|s| s.0);
    for w in samples.windows(2) {
        if w[1].1 != w[0].1 {
            since = Some(w[1].0);
        } else if let Some(t) = since {
            longest = longest.max(w[1].0 - t);
        }
    }
    longest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volume_commands_on_a_hung_mount_fail_clearly_and_heartbeats_keep_time() {
    let f = Fixture::new(fast_liveness()).await;
    let (plane, host) = (&f.plane, f.host);
    let mut cfg = f.config();
    cfg.hypervisor.uri = "qemu:///system".into();
    cfg.storage.fs_timeout_secs = 2;
    // The hung mount is also where a template is copied from.
    cfg.storage.template_roots = vec![std::env::temp_dir()];
    let agent = run_in_process(cfg);
    f.wait_up(String::new).await;
    let t = Duration::from_secs(30);

    let dir = tempfile::Builder::new()
        .prefix("csat-hang-pool-")
        .tempdir()
        .unwrap();
    let pool = format!(
        "csat-hang-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let add_pool = |name: &str, dir: &std::path::Path| {
        B::AddPool(pb::AddPool {
            pool: Some(pb::PoolDefinition {
                name: name.into(),
                kind: Some(pb::pool_definition::Kind::Dir(pb::DirPool {
                    path: dir.to_str().unwrap().into(),
                })),
            }),
        })
    };
    ok(&call(plane, &host, cmd("", 0, add_pool(&pool, dir.path())), t).await);
    let create = |name: &str| {
        B::CreateVolume(pb::CreateVolume {
            pool: pool.clone(),
            name: name.into(),
            format: pb::VolumeFormat::Qcow2 as i32,
            size_bytes: 16 << 20,
        })
    };
    ok(&call(plane, &host, cmd("", 0, create("root.qcow2")), t).await);
    // A healthy pool to copy a template from the hung mount into.
    let good_dir = tempfile::Builder::new()
        .prefix("csat-hang-good-")
        .tempdir()
        .unwrap();
    let good = format!("{pool}-good");
    ok(&call(
        plane,
        &host,
        cmd("", 0, add_pool(&good, good_dir.path())),
        t,
    )
    .await);

    let mut hang = match HungMount::over(dir.path()) {
        Ok(m) => m,
        Err(why) => {
            skip!("{why}");
            return;
        }
    };
    let (samples, sampler) = sample_heartbeats(Arc::clone(&plane.registry), host);
    let started = Instant::now();
    let volume = || (pool.clone(), "root.qcow2".to_string());
    let bodies = [
        B::DeleteVolume(pb::DeleteVolume {
            pool: volume().0,
            name: volume().1,
        }),
        B::GetVolumeInfo(pb::GetVolumeInfo {
            pool: volume().0,
            name: volume().1,
        }),
        create("second.qcow2"),
        // Secondary storage hung: bounded by fs_timeout too, not by the
        // operation's two minutes.
        B::CopyTemplate(pb::CopyTemplate {
            pool: good.clone(),
            name: "copy.qcow2".into(),
            source: Some(pb::copy_template::Source::Path(
                dir.path().join("root.qcow2").to_str().unwrap().into(),
            )),
            format: pb::VolumeFormat::Qcow2 as i32,
            unverified: true,
            ..Default::default()
        }),
    ];
    let mut rxs = Vec::new();
    for b in bodies {
        rxs.push(plane.registry.send(&host.to_string(), cmd("", 0, b)).1);
    }
    let mut results = Vec::new();
    for mut rx in rxs {
        results.push(result_of(&mut rx, Duration::from_secs(20)).await);
    }
    let took = started.elapsed();
    // Two more heartbeat intervals with the calls still blocked in the kernel.
    tokio::time::sleep(Duration::from_millis(600)).await;
    sampler.abort();
    hang.release();

    for r in &results {
        assert_eq!(r.error_code, pb::ErrorCode::Unavailable as i32, "{r:?}");
        assert!(
            r.message.contains("hung") && r.message.contains(dir.path().to_str().unwrap()),
            "the error names the hung mount: {}",
            r.message
        );
    }
    assert!(
        took < Duration::from_secs(8),
        "the commands took {took:?} to fail"
    );
    let samples = samples.lock().unwrap().clone();
    let silence = longest_silence(&samples);
    let (first, last) = (samples[0].1, samples[samples.len() - 1].1);
    let span = samples[samples.len() - 1].0 - samples[0].0;
    eprintln!("heartbeats {first}..{last} over {span:?} of hang, longest silence {silence:?}");
    // 200 ms heartbeats: a stalled worker shows as seconds of silence.
    assert!(
        silence < Duration::from_millis(700),
        "heartbeats stood still for {silence:?}"
    );
    assert!(
        last - first >= (span.as_millis() / 200) as u64 / 2,
        "only {} heartbeats in {span:?}",
        last - first
    );

    // After the hang, the pools work again and go away cleanly.
    for name in [&pool, &good] {
        let remove = B::RemovePool(pb::RemovePool { name: name.clone() });
        ok(&call(plane, &host, cmd("", 0, remove), t).await);
    }
    agent.stop().await;
}
