//! Dialing one management endpoint: TCP, then TLS 1.3, then an HTTP/2
//! channel with keepalive.
//!
//! Owns the transport only. tonic sees a plain HTTP/2 connection over our own
//! rustls stream, so the TLS policy (tls.rs) is ours and not tonic's. HTTP/2
//! PINGs run even when idle, so a peer that vanished without a FIN (power
//! loss, cable cut) is noticed within interval + timeout.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint as TonicEndpoint};

use crate::endpoints::Endpoint;

/// A management endpoint could not be reached (TCP, TLS or HTTP/2).
#[derive(Debug, thiserror::Error)]
#[error("cannot connect to management endpoint {endpoint}: {reason}")]
pub struct DialError {
    pub endpoint: String,
    pub reason: String,
}

pub struct DialOptions {
    pub connect_timeout: Duration,
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
}

pub async fn dial(
    ep: &Endpoint,
    tls: Arc<ClientConfig>,
    opts: &DialOptions,
) -> Result<Channel, DialError> {
    let name = ServerName::try_from(ep.host.clone()).map_err(|e| DialError {
        endpoint: ep.to_string(),
        reason: format!("invalid server name: {e}"),
    })?;
    let authority = ep.authority();
    let connector = tower::service_fn(move |_uri: http::Uri| {
        let tls = Arc::clone(&tls);
        let name = name.clone();
        let authority = authority.clone();
        async move {
            let tcp = TcpStream::connect(&authority).await?;
            tcp.set_nodelay(true)?;
            let stream = TlsConnector::from(tls).connect(name, tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        }
    });
    let uri = format!("http://{}", ep.authority());
    let endpoint = TonicEndpoint::from_shared(uri)
        .map_err(|e| DialError {
            endpoint: ep.to_string(),
            reason: e.to_string(),
        })?
        .connect_timeout(opts.connect_timeout)
        .http2_keep_alive_interval(opts.keepalive_interval)
        .keep_alive_timeout(opts.keepalive_timeout)
        .keep_alive_while_idle(true)
        .tcp_nodelay(true);
    let channel = tokio::time::timeout(
        opts.connect_timeout,
        endpoint.connect_with_connector(connector),
    )
    .await
    .map_err(|_| DialError {
        endpoint: ep.to_string(),
        reason: format!(
            "no connection within {} ms",
            opts.connect_timeout.as_millis()
        ),
    })?
    .map_err(|e| DialError {
        endpoint: ep.to_string(),
        reason: error_chain(&e),
    })?;
    Ok(channel)
}

/// The whole cause chain: tonic's top-level "transport error" alone does not
/// tell an operator that the certificate was rejected.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let msg = s.to_string();
        if !out.contains(&msg) {
            out.push_str(": ");
            out.push_str(&msg);
        }
        cur = s.source();
    }
    out
}
