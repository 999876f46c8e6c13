//! One session on one endpoint: register, then heartbeats, commands and
//! results until the stream ends.
//!
//! Owns the protocol rules of agent.proto's session: Register first, nothing
//! else until RegisterAck, heartbeats at the plane's interval, and the
//! application-level liveness check (ping_retries heartbeat acks missed in a
//! row end the session even if TCP looks alive). It never touches VMs: a
//! session ending, for whatever reason, only ends this stream.

use futures::FutureExt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Streaming;

use super::{LinkCtx, LinkError};
use crate::dial::{dial, error_chain};
use crate::endpoints::Endpoint;
use csagent_proto::v1 as pb;
use csagent_proto::v1::agent_link_client::AgentLinkClient;

const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(5);
const DEFAULT_HOST_REPORT: Duration = Duration::from_secs(60);
/// Room for a burst of results between two polls of the stream.
const STREAM_BUFFER: usize = 64;

/// How a session that got as far as RegisterAck ended.
pub enum Ended {
    /// Closed by us on shutdown.
    Closed,
}

pub fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Runs a session; `established` is called once RegisterAck arrived.
pub async fn run(
    ep: &Endpoint,
    ctx: &LinkCtx,
    close: &CancellationToken,
    established: impl FnOnce(&pb::RegisterAck),
) -> Result<Ended, LinkError> {
    // The certificate to dial with: a renewed one is tried first and kept
    // only once the plane accepted it (identity/credentials.rs).
    let (tls, generation) = ctx.tls.config();
    let opened = open(ep, ctx, tls).await;
    ctx.tls.outcome(generation, opened.is_ok());
    let (tx, mut inbound, ack) = opened?;
    established(&ack);
    let forwarder = tokio::spawn(forward_outbox(Arc::clone(&ctx.outbox), tx.clone()));
    let result = serve(ep, ctx, close, &ack, &tx, &mut inbound).await;
    forwarder.abort();
    if matches!(result, Ok(Ended::Closed)) {
        flush_and_close(ctx, tx, &mut inbound).await;
    }
    result
}

type Opened = (
    mpsc::Sender<pb::AgentMessage>,
    Streaming<pb::PlaneMessage>,
    pb::RegisterAck,
);

/// Dial, Register, RegisterAck.
async fn open(
    ep: &Endpoint,
    ctx: &LinkCtx,
    tls: Arc<rustls::ClientConfig>,
) -> Result<Opened, LinkError> {
    let channel = dial(ep, tls, &ctx.dial).await?;
    let mut client = AgentLinkClient::new(channel)
        .max_decoding_message_size(ctx.max_message_bytes)
        .max_encoding_message_size(ctx.max_message_bytes);
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    let _ = tx
        .send(agent_msg(pb::agent_message::Msg::Register(
            register(ctx).await,
        )))
        .await;
    let stream_err = |e: tonic::Status| LinkError::Stream {
        endpoint: ep.to_string(),
        reason: status_text(&e),
    };
    let mut inbound = tokio::time::timeout(
        ctx.dial.connect_timeout * 2,
        client.session(ReceiverStream::new(rx)),
    )
    .await
    .map_err(|_| LinkError::Stream {
        endpoint: ep.to_string(),
        reason: "the plane did not open the stream in time".into(),
    })?
    .map_err(stream_err)?
    .into_inner();
    let ack = wait_register_ack(ep, &mut inbound, ctx.dial.connect_timeout * 2).await?;
    Ok((tx, inbound, ack))
}

async fn wait_register_ack(
    ep: &Endpoint,
    inbound: &mut Streaming<pb::PlaneMessage>,
    limit: Duration,
) -> Result<pb::RegisterAck, LinkError> {
    let first = tokio::time::timeout(limit, inbound.message())
        .await
        .map_err(|_| LinkError::Stream {
            endpoint: ep.to_string(),
            reason: "no RegisterAck in time".into(),
        })?;
    match first {
        Ok(Some(pb::PlaneMessage {
            msg: Some(pb::plane_message::Msg::RegisterAck(ack)),
        })) => Ok(ack),
        Ok(other) => Err(LinkError::Stream {
            endpoint: ep.to_string(),
            reason: format!("expected RegisterAck, got {other:?}"),
        }),
        Err(e) => Err(LinkError::Stream {
            endpoint: ep.to_string(),
            reason: format!("registration refused: {}", status_text(&e)),
        }),
    }
}

/// The established session's loop.
async fn serve(
    ep: &Endpoint,
    ctx: &LinkCtx,
    close: &CancellationToken,
    ack: &pb::RegisterAck,
    tx: &mpsc::Sender<pb::AgentMessage>,
    inbound: &mut Streaming<pb::PlaneMessage>,
) -> Result<Ended, LinkError> {
    let hb_every = interval_or(ack.heartbeat_interval_ms, DEFAULT_HEARTBEAT);
    let report_every = interval_or(ack.host_report_interval_ms, DEFAULT_HOST_REPORT);
    let silent_limit = hb_every * ctx.ping_retries.max(1) + hb_every / 2;
    let mut heartbeat = tokio::time::interval(hb_every);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut report = tokio::time::interval(report_every);
    report.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_ack = Instant::now();
    let mut report_job: Option<futures::future::BoxFuture<'_, pb::HostReport>> = None;
    loop {
        tokio::select! {
            _ = close.cancelled() => return Ok(Ended::Closed),
            msg = inbound.message() => match msg {
                Ok(Some(m)) => {
                    if matches!(m.msg, Some(pb::plane_message::Msg::HeartbeatAck(_))) {
                        last_ack = Instant::now();
                    }
                    on_plane_message(ctx, m);
                }
                Ok(None) => return Err(LinkError::Stream { endpoint: ep.to_string(), reason: "the plane closed the stream".into() }),
                Err(e) => return Err(LinkError::Stream { endpoint: ep.to_string(), reason: status_text(&e) }),
            },
            _ = heartbeat.tick() => {
                if last_ack.elapsed() > silent_limit {
                    return Err(LinkError::Stream {
                        endpoint: ep.to_string(),
                        reason: format!("no heartbeat ack for {} ms ({} missed)", last_ack.elapsed().as_millis(), ctx.ping_retries),
                    });
                }
                // A full buffer means the plane is not reading; skipping a
                // heartbeat then is right (the ack check above notices).
                let _ = tx.try_send(agent_msg(pb::agent_message::Msg::Heartbeat(ctx.heartbeat())));
                if let Some(renew) = ctx.renewal_request() {
                    let _ = tx.try_send(renew);
                }
            }
            // The report may wait on a hung libvirtd (pool listing): it is
            // built alongside, never in the way of heartbeats.
            _ = report.tick(), if report_job.is_none() => {
                report_job = Some(ctx.host_report().boxed());
            }
            r = async {
                match report_job.as_mut() {
                    Some(job) => job.await,
                    None => std::future::pending().await,
                }
            } => {
                report_job = None;
                let _ = tx.try_send(agent_msg(pb::agent_message::Msg::HostReport(r)));
            }
        }
    }
}

fn on_plane_message(ctx: &LinkCtx, m: pb::PlaneMessage) {
    use pb::plane_message::Msg;
    match m.msg {
        Some(Msg::Command(cmd)) => ctx.dispatcher.submit(cmd),
        Some(Msg::Cancel(c)) => ctx.dispatcher.cancel(&c.command_id),
        Some(Msg::HeartbeatAck(a)) => ctx.note_server_time(a.server_time_unix_ms),
        Some(Msg::RegisterAck(_)) => tracing::warn!("unexpected second RegisterAck ignored"),
        Some(Msg::CertificateIssued(c)) => ctx.on_certificate(c),
        Some(Msg::TrustBundle(b)) => ctx.on_trust_bundle(b),
        None => tracing::warn!("empty or unknown message from the plane ignored (newer plane?)"),
    }
}

/// Moves queued results and events onto the stream, taking one from the
/// outbox only when the stream has room for it, so nothing is popped and lost.
async fn forward_outbox(outbox: Arc<crate::outbox::Outbox>, tx: mpsc::Sender<pb::AgentMessage>) {
    while let Ok(permit) = tx.reserve().await {
        let msg = outbox.next().await;
        permit.send(msg);
    }
}

/// Clean end on shutdown: send what is queued, end our half of the stream,
/// and give the plane a moment to end its half.
async fn flush_and_close(
    ctx: &LinkCtx,
    tx: mpsc::Sender<pb::AgentMessage>,
    inbound: &mut Streaming<pb::PlaneMessage>,
) {
    while !ctx.outbox.is_empty() {
        let msg = ctx.outbox.next().await;
        if tx.send(msg).await.is_err() {
            break;
        }
    }
    drop(tx);
    tracing::debug!("request stream ended; waiting for the plane to end its half");
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Ok(Some(_)) = inbound.message().await {}
    })
    .await;
}

async fn register(ctx: &LinkCtx) -> pb::Register {
    let snapshot = ctx.fresh_vms().await;
    pb::Register {
        host_uuid: ctx.identity.host_uuid.clone(),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        protocol_version: pb::ProtocolVersion::ProtocolVersion1 as i32,
        zone: ctx.identity.zone.clone(),
        pod: ctx.identity.pod.clone(),
        cluster: ctx.identity.cluster.clone(),
        host_tags: ctx.identity.host_tags.clone(),
        facts: Some(crate::convert::host::facts_to_proto(
            &ctx.host.facts(),
            env!("CARGO_PKG_VERSION"),
        )),
        vms: snapshot
            .vms
            .iter()
            .map(crate::convert::link::vm_status)
            .collect(),
        sent_at_unix_ms: unix_ms(),
        in_flight_command_ids: ctx.dispatcher.in_flight(),
        hypervisor_available: snapshot.available,
        isolation_actions: ctx.isolation.notes(),
        local_pool: ctx.identity.local_pool.clone(),
    }
}

fn interval_or(ms: u32, default: Duration) -> Duration {
    if ms == 0 {
        default
    } else {
        Duration::from_millis(u64::from(ms))
    }
}

fn agent_msg(m: pb::agent_message::Msg) -> pb::AgentMessage {
    pb::AgentMessage { msg: Some(m) }
}

fn status_text(s: &tonic::Status) -> String {
    let mut out = format!("{:?}: {}", s.code(), s.message());
    if let Some(src) = std::error::Error::source(s) {
        out.push_str(": ");
        out.push_str(&error_chain(src));
    }
    out
}
