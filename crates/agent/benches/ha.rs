//! High availability in the lab (scripts/lab.sh up 2), measured.
//!
//! - Death: with the shipped defaults (csagent-mgmt serve's liveness, [ha]'s
//!   5 s storage heartbeat, the lab fence), host 1 loses power while it runs
//!   an HA VM; the time from the cut to the VM Running on host 2 (libvirt's
//!   own domstate there). Goal: ≤ 45 s. ROUNDS rounds (default 3).
//! - False restarts: FALSE_RUNS runs (default 3) each of a link cut (fault
//!   2) and a frozen agent whose VM writes its disk (fault 3), with the
//!   tests' fast clocks, each held for 15 s: any restart is false.
//! - Double runs: in every run, the VM seen running on both hosts at once.
//!
//! Run: `bash scripts/lab.sh up 2 && cargo bench --bench ha`
//! (`ROUNDS=5 FALSE_RUNS=20 cargo bench --bench ha` for the 20).

// Benchmarks drive the lab's own tools: the boundary rules of clippy.toml
// are for the product code.
#![allow(clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use csagent_proto::v1 as pb;
use csagent_testkit::ha::{
    cut_power, ha_actions, start_on_a, Guest, HaLab, HaTiming, SharedDisk, HA_QUIET,
};
use csagent_testkit::lab::{domain_name, Lab, LabDomain};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    if let Err(why) = Lab::get(2) {
        println!("ha bench skipped: {why}");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(run(env_or("ROUNDS", 3), env_or("FALSE_RUNS", 3)));
}

#[derive(Default)]
struct Tally {
    restarts: usize,
    doubles: usize,
}

impl Tally {
    /// Watches the VM on both hosts for `hold`.
    async fn watch(&mut self, lab: &Lab, name: &str, hold: Duration) {
        let until = Instant::now() + hold;
        while Instant::now() < until {
            let on = |i| lab.domstate(i, name).as_deref() == Some("running");
            if on(1) && on(2) {
                self.doubles += 1;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

async fn run(rounds: usize, false_runs: usize) {
    let mut took = Vec::new();
    let mut tally = Tally::default();
    for round in 1..=rounds {
        match death(&mut tally).await {
            Ok(t) => {
                println!(
                    "death round {round}: cut -> Running on host 2 in {:.1} s",
                    t.as_secs_f64()
                );
                took.push(t);
            }
            Err(e) => println!("death round {round}: FAILED: {e}"),
        }
    }
    for (kind, freeze) in [("link cut", false), ("frozen agent", true)] {
        let mut false_restarts = 0;
        for _ in 0..false_runs {
            false_restarts += false_alarm(freeze, &mut tally).await;
        }
        println!("{kind}: {false_restarts} false restarts in {false_runs} runs");
    }
    took.sort();
    if let Some(median) = took.get(took.len() / 2) {
        let worst = took.last().copied().unwrap_or_default();
        println!(
            "ha: host death -> HA VM Running elsewhere: median {:.1} s, worst {:.1} s over {} rounds (goal <= 45 s)",
            median.as_secs_f64(),
            worst.as_secs_f64(),
            took.len()
        );
    }
    println!(
        "ha: double runs seen: {} (in every run, polled every 250 ms)",
        tally.doubles
    );
}

async fn death(tally: &mut Tally) -> Result<Duration, String> {
    let h = HaLab::start(&HaTiming::defaults()).await?;
    let name = domain_name("bench-ha");
    let dom = LabDomain {
        lab: &h.lab,
        name: name.clone(),
    };
    let disk = SharedDisk::new("bench");
    start_on_a(&h, &name, HA_QUIET, &disk).await;
    let cut = Instant::now();
    let revive = cut_power(&h);
    let mut running = None;
    while cut.elapsed() < Duration::from_secs(180) {
        if h.lab.domstate(2, &name).as_deref() == Some("running") {
            running = Some(cut.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tally.watch(&h.lab, &name, Duration::from_secs(2)).await;
    drop((dom, revive));
    finish(h).await;
    running.ok_or_else(|| "the HA VM was not Running on host 2 within 180 s".into())
}

/// One run of fault 2 or 3; the number of restarts it caused (all false).
async fn false_alarm(freeze: bool, tally: &mut Tally) -> usize {
    let h = match HaLab::start(&HaTiming::fast()).await {
        Ok(h) => h,
        Err(e) => {
            println!("false-alarm run skipped: {e}");
            return 0;
        }
    };
    let name = domain_name("bench-fa");
    let dom = LabDomain {
        lab: &h.lab,
        name: name.clone(),
    };
    let disk = SharedDisk::new("bench");
    let guest = Guest {
        ha: true,
        writes: freeze,
    };
    let vm = start_on_a(&h, &name, guest, &disk).await;
    let mut events = h.plane.registry.subscribe();
    if freeze {
        h.agent_a.signal(nix::sys::signal::Signal::SIGSTOP);
    } else {
        h.link.cut();
    }
    tally.watch(&h.lab, &name, Duration::from_secs(15)).await;
    if freeze {
        h.agent_a.signal(nix::sys::signal::Signal::SIGCONT);
    } else {
        h.link.heal();
    }
    let restarts = ha_actions(&mut events, &vm)
        .iter()
        .filter(|(k, _)| *k == pb::ha_action::Kind::Restarted as i32)
        .count();
    tally.restarts += restarts;
    drop(dom);
    finish(h).await;
    restarts
}

async fn finish(mut h: HaLab) {
    if let Some(b) = h.agent_b.take() {
        b.stop().await;
    }
}
