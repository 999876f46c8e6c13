//! Host identity figures (issue 8): what a renewal costs the host (key and
//! CSR) and the plane (verifying and signing a CSR), and a token's create and
//! consume with its atomic state-file write. A fleet of hundreds of hosts
//! renewing every few days puts these far below anything that matters; the
//! figures say how far.
//!
//! Run: `cargo bench --bench identity`.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};

use csagent_mgmt::tokens::TokenStore;
use csagent_tls::pki::{self, Ca, Validity};

fn bench(c: &mut Criterion) {
    let host = uuid::Uuid::new_v4();
    let ca = Ca::generate("bench CA", Validity::for_lifetime(pki::CA_LIFETIME)).unwrap();
    let (csr, _) = pki::agent_csr(&host).unwrap();
    let mut g = c.benchmark_group("identity");
    g.bench_function("agent_key_and_csr", |b| {
        b.iter(|| pki::agent_csr(&host).unwrap())
    });
    g.bench_function("plane_verify_and_sign_csr", |b| {
        b.iter(|| {
            ca.sign_agent_csr(&csr, &host, Validity::for_lifetime(pki::LEAF_LIFETIME))
                .unwrap()
        })
    });
    let dir = tempfile::Builder::new()
        .prefix("csat-idbench-")
        .tempdir()
        .unwrap();
    let store = TokenStore::open(dir.path().join("tokens.json")).unwrap();
    g.bench_function("token_create_and_consume", |b| {
        b.iter(|| {
            let t = store.create(&host, Duration::from_secs(60)).unwrap();
            store
                .consume(&t.token, &host, || {
                    Ok::<_, csagent_mgmt::tokens::TokenError>(())
                })
                .unwrap()
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
