//! This host's storage heartbeat: a record on every shared pool, rewritten
//! every interval, and what operators and the plane see of it.
//!
//! Owns the write loop and its per-pool status. Each write runs on a
//! blocking thread under a timeout; a pool whose previous write is still
//! stuck (a hung mount) is not written again until that one returns, so a
//! dead mount costs one thread, not one per interval. It never acts on a
//! failure: deciding what a failed heartbeat means is the caller's.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use csagent_core::sync::lock;
use csagent_core::time::unix_ms;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::record::{self, Record};

const NOT_YET: &str = "not written yet";

/// How this host writes its heartbeat.
#[derive(Clone, Debug)]
pub struct BeatConfig {
    pub host: Uuid,
    /// Mount points of the shared pools, the same path on every host.
    pub pools: Vec<PathBuf>,
    pub interval: Duration,
    /// A write that takes longer has failed (the pool is reported stale).
    pub timeout: Duration,
}

/// The heartbeat on one pool, as last attempted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PoolBeat {
    pub pool: PathBuf,
    /// The latest attempt was written and synced.
    pub ok: bool,
    /// Unix ms of the last successful write; 0: none yet.
    pub last_written_unix_ms: i64,
    pub counter: u64,
    /// Why the latest attempt failed; empty while ok.
    pub error: String,
}

/// Writes the heartbeat and keeps its status.
pub struct Beat {
    cfg: BeatConfig,
    status: Mutex<Vec<PoolBeat>>,
    stuck: Vec<Arc<AtomicBool>>,
}

impl Beat {
    pub fn new(cfg: BeatConfig) -> Beat {
        let status = cfg
            .pools
            .iter()
            .map(|p| PoolBeat {
                pool: p.clone(),
                error: NOT_YET.into(),
                ..PoolBeat::default()
            })
            .collect();
        let stuck = cfg.pools.iter().map(|_| Arc::default()).collect();
        Beat {
            cfg,
            status: Mutex::new(status),
            stuck,
        }
    }

    pub fn config(&self) -> &BeatConfig {
        &self.cfg
    }

    /// Every pool's heartbeat as last attempted.
    pub fn status(&self) -> Vec<PoolBeat> {
        lock(&self.status).clone()
    }

    /// Longest time since every pool was last written, from now; None
    /// while every pool's latest write succeeded.
    pub fn failing_for(&self, now_unix_ms: i64) -> Option<Duration> {
        let s = lock(&self.status);
        if s.is_empty() || s.iter().any(|b| b.ok) {
            return None;
        }
        let newest = s.iter().map(|b| b.last_written_unix_ms).max().unwrap_or(0);
        let ms = u64::try_from(now_unix_ms.saturating_sub(newest)).unwrap_or(0);
        Some(Duration::from_millis(ms))
    }

    /// Writes every interval until `stop` fires.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        if self.cfg.pools.is_empty() {
            return;
        }
        let mut counters = self.start_counters().await;
        let mut tick = tokio::time::interval(self.cfg.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let writes = (0..self.cfg.pools.len()).map(|i| {
                counters[i] += 1;
                self.write_one(i, counters[i])
            });
            futures::future::join_all(writes).await;
        }
    }

    /// Counters go on from what is on the pools, so a restarted agent's
    /// record keeps moving forward for the neighbours watching it.
    async fn start_counters(&self) -> Vec<u64> {
        let mut out = Vec::with_capacity(self.cfg.pools.len());
        for pool in &self.cfg.pools {
            let (pool, host) = (pool.clone(), self.cfg.host);
            let read = tokio::task::spawn_blocking(move || record::read(&pool, &host));
            let found = match tokio::time::timeout(self.cfg.timeout, read).await {
                Ok(Ok(Ok(Some(r)))) => r.counter,
                _ => 0,
            };
            out.push(found);
        }
        out
    }

    async fn write_one(&self, i: usize, counter: u64) {
        let pool = self.cfg.pools[i].clone();
        let stuck = Arc::clone(&self.stuck[i]);
        if stuck.load(Ordering::Acquire) {
            self.failed(
                i,
                "the previous write has not returned (hung storage?)".into(),
            );
            return;
        }
        let rec = Record {
            host: self.cfg.host,
            counter,
            written_unix_ms: unix_ms(),
        };
        stuck.store(true, Ordering::Release);
        let flag = Arc::clone(&stuck);
        let p = pool.clone();
        let write = tokio::task::spawn_blocking(move || {
            let r = record::write(&p, &rec);
            flag.store(false, Ordering::Release);
            r
        });
        match tokio::time::timeout(self.cfg.timeout, write).await {
            Ok(Ok(Ok(()))) => self.written(i, &rec),
            Ok(Ok(Err(e))) => self.failed(i, e.to_string()),
            Ok(Err(e)) => self.failed(i, format!("the write task failed: {e}")),
            Err(_) => self.failed(
                i,
                format!(
                    "{}: write not done within {} ms",
                    pool.display(),
                    self.cfg.timeout.as_millis()
                ),
            ),
        }
    }

    fn written(&self, i: usize, rec: &Record) {
        let mut s = lock(&self.status);
        let b = &mut s[i];
        if !b.ok && b.last_written_unix_ms > 0 {
            tracing::info!(pool = %b.pool.display(), "storage heartbeat written again");
        }
        b.ok = true;
        b.counter = rec.counter;
        b.last_written_unix_ms = rec.written_unix_ms;
        b.error.clear();
    }

    fn failed(&self, i: usize, why: String) {
        let mut s = lock(&self.status);
        let b = &mut s[i];
        if b.ok || b.error == NOT_YET {
            tracing::warn!(pool = %b.pool.display(), error = %why, "storage heartbeat not written; neighbours may judge this host dead on this pool");
        }
        b.ok = false;
        b.error = why;
    }
}
