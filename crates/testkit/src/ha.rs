//! High-availability test support: a plane with HA on, and a TCP link that a
//! test can cut and heal (a network partition between one agent and the
//! plane, while everything else keeps running).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use csagent_mgmt::ha::HaConfig;
use csagent_mgmt::{Liveness, Plane, PlaneConfig};

use crate::TestPki;

/// An in-process plane with high availability on.
pub async fn start_plane_ha(pki: &TestPki, liveness: Liveness, ha: HaConfig) -> Plane {
    Plane::start(PlaneConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        tls: pki.server.clone(),
        admin_socket: None,
        liveness,
        plane_id: "test-plane-ha".into(),
        max_message_bytes: 16 << 20,
        ha: Some(ha),
    })
    .await
    .unwrap()
}

/// A loopback TCP relay to `target`. `cut` ends every relayed connection
/// and refuses new ones (the agent sees its link fail and its redials
/// fail) until `heal`.
pub struct CutLink {
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    conns: Arc<Mutex<CancellationToken>>,
    stop: CancellationToken,
}

impl CutLink {
    pub async fn start(target: SocketAddr) -> CutLink {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let link = CutLink {
            addr,
            cut: Arc::default(),
            conns: Arc::new(Mutex::new(CancellationToken::new())),
            stop: CancellationToken::new(),
        };
        let (cut, conns, stop) = (
            Arc::clone(&link.cut),
            Arc::clone(&link.conns),
            link.stop.clone(),
        );
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = stop.cancelled() => return,
                    a = listener.accept() => a,
                };
                let Ok((client, _)) = accepted else { continue };
                if cut.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let gone = conns.lock().unwrap().clone();
                tokio::spawn(relay(client, target, gone));
            }
        });
        link
    }

    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        let mut conns = self.conns.lock().unwrap();
        conns.cancel();
        *conns = CancellationToken::new();
    }

    pub fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for CutLink {
    fn drop(&mut self) {
        self.stop.cancel();
        self.conns.lock().unwrap().cancel();
    }
}

async fn relay(mut client: TcpStream, target: SocketAddr, gone: CancellationToken) {
    let Ok(mut server) = TcpStream::connect(target).await else {
        return;
    };
    tokio::select! {
        _ = gone.cancelled() => {}
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
    }
}
