//! The heartbeat written to real files and judged by a neighbour's check.

use std::sync::Arc;
use std::time::Duration;

use csagent_ha::{check, Beat, BeatConfig, Question, Sign, Verdict};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const INTERVAL: Duration = Duration::from_millis(100);

fn beat(pools: &[&std::path::Path]) -> Arc<Beat> {
    Arc::new(Beat::new(BeatConfig {
        host: Uuid::new_v4(),
        pools: pools.iter().map(|p| p.to_path_buf()).collect(),
        interval: INTERVAL,
        timeout: Duration::from_secs(2),
    }))
}

fn question(b: &Beat, pools: &[&std::path::Path], host: Option<Uuid>) -> Question {
    Question {
        host: host.unwrap_or_else(|| b.config().host),
        pools: pools.iter().map(|p| p.to_path_buf()).collect(),
        disks: Vec::new(),
        window: INTERVAL * 3,
        timeout: Duration::from_secs(2),
    }
}

async fn written(b: &Beat) {
    for _ in 0..50 {
        if b.status().iter().all(|p| p.ok) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("never written: {:?}", b.status());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writing_host_is_alive_and_a_stopped_one_dead_on_every_pool() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let pools = [a.path(), b.path()];
    let host = beat(&pools);
    let stop = CancellationToken::new();
    let task = tokio::spawn(Arc::clone(&host).run(stop.clone()));
    written(&host).await;
    let status = host.status();
    assert!(
        status
            .iter()
            .all(|p| p.counter >= 1 && p.last_written_unix_ms > 0),
        "{status:?}"
    );

    let seen = check(&question(&host, &pools, None)).await;
    assert_eq!(seen.verdict, Verdict::Alive, "{:?}", seen.evidence);
    assert!(
        seen.evidence.iter().all(|e| e.sign == Sign::Life),
        "{:?}",
        seen.evidence
    );

    stop.cancel();
    task.await.unwrap();
    let seen = check(&question(&host, &pools, None)).await;
    assert_eq!(seen.verdict, Verdict::Dead, "{:?}", seen.evidence);
    assert!(
        seen.evidence[0].detail.contains("counter stays at"),
        "{:?}",
        seen.evidence
    );
}

#[tokio::test]
async fn a_host_with_no_record_is_unknown_never_dead() {
    let a = tempfile::tempdir().unwrap();
    let host = beat(&[a.path()]);
    let seen = check(&question(&host, &[a.path()], Some(Uuid::new_v4()))).await;
    assert_eq!(seen.verdict, Verdict::Unknown);
    assert_eq!(seen.evidence[0].sign, Sign::Unreadable);
    assert!(
        seen.evidence[0].detail.contains("no record"),
        "{:?}",
        seen.evidence
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_host_whose_vm_writes_its_disk_is_alive() {
    let a = tempfile::tempdir().unwrap();
    let host = beat(&[a.path()]);
    // One record, then silence: the agent is frozen, its VM is not.
    let stop = CancellationToken::new();
    let task = tokio::spawn(Arc::clone(&host).run(stop.clone()));
    written(&host).await;
    stop.cancel();
    task.await.unwrap();
    let disk = a.path().join("vm-disk.qcow2");
    std::fs::write(&disk, b"x").unwrap();
    let writer = {
        let disk = disk.clone();
        tokio::spawn(async move {
            for i in 0..20u8 {
                tokio::time::sleep(Duration::from_millis(30)).await;
                let _ = std::fs::write(&disk, vec![i; usize::from(i) + 2]);
            }
        })
    };
    let mut q = question(&host, &[a.path()], None);
    q.disks = vec![disk];
    let seen = check(&q).await;
    writer.await.unwrap();
    assert_eq!(seen.verdict, Verdict::Alive, "{:?}", seen.evidence);
    assert_eq!(seen.evidence[0].sign, Sign::Still, "{:?}", seen.evidence);
    assert_eq!(seen.evidence[1].sign, Sign::Life, "{:?}", seen.evidence);
}

#[tokio::test]
async fn an_unwritable_pool_is_reported_with_its_error() {
    let a = tempfile::tempdir().unwrap();
    // A file where the records' directory should be: every write fails.
    std::fs::write(a.path().join(csagent_ha::record::DIR), b"").unwrap();
    let host = beat(&[a.path()]);
    let stop = CancellationToken::new();
    let task = tokio::spawn(Arc::clone(&host).run(stop.clone()));
    tokio::time::sleep(INTERVAL * 3).await;
    stop.cancel();
    task.await.unwrap();
    let s = host.status();
    assert!(!s[0].ok);
    assert!(s[0].error.contains(".csagent-ha"), "{s:?}");
    assert!(host.failing_for(csagent_core::time::unix_ms()).is_some());
}
