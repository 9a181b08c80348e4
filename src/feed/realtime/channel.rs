//! One attempt at the upstream channel, in phases: [`connect`], [`join`] (the `phx_join` reply
//! and the check that Realtime echoed our bindings), [`await_subscribed`] (Realtime's `system`
//! "Subscribed to PostgreSQL"), then [`pump`] (heartbeats, changes, loss detection, and the
//! typing topic of [`super::broadcast`] beside the feed's) until the channel is lost or the
//! gateway stops. Every phase ends in a typed [`Lost`].

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::sync::CancellationToken;

use super::broadcast::{self, Seen, TypingChannel};
use super::event::decode_payload;
use super::phoenix::{decode_any, encode, Frame, Vsn};
use super::{Binding, UpstreamConfig};
use crate::feed::supervise::Ended;
use crate::feed::{Lost, UpstreamEvent};
use crate::typing::{RelayLink, Signal};

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct Conn {
    ws: Socket,
    vsn: Vsn,
    next_ref: u64,
    join_ref: Option<String>,
}

impl Conn {
    async fn push(
        &mut self,
        join_ref: Option<String>,
        topic: &str,
        event: &str,
        payload: Value,
    ) -> Result<String, Lost> {
        self.next_ref += 1;
        let reference = self.next_ref.to_string();
        let frame =
            Frame { join_ref, reference: Some(reference.clone()), topic: topic.into(), event: event.into(), payload };
        self.ws.send(Message::text(encode(&frame, self.vsn))).await.map_err(|e| Lost::Socket(e.to_string()))?;
        Ok(reference)
    }

    /// The next Phoenix frame; `Lost` when the socket is gone.
    async fn next_frame(&mut self) -> Result<Frame, Lost> {
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Text(text))) => match decode_any(text.as_str()) {
                    Ok(frame) => return Ok(frame),
                    Err(e) => tracing::warn!(error = %e, "ignoring an unreadable upstream frame"),
                },
                Some(Ok(Message::Close(frame))) => {
                    return Err(Lost::Closed(
                        frame.map(|f| format!(" ({} {})", u16::from(f.code), f.reason)).unwrap_or_default(),
                    ))
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(Lost::Socket(e.to_string())),
                None => return Err(Lost::Closed(String::new())),
            }
        }
    }
}

/// Runs one attempt: connect, join, wait for the subscription, pump until lost or stopped.
pub(super) async fn serve(
    config: &UpstreamConfig,
    events: &mpsc::Sender<UpstreamEvent>,
    stop: &CancellationToken,
    generation: &mut u64,
    typing: Option<&mut RelayLink>,
) -> Ended {
    let lost = |lost| Ended::Lost { lost, was_live: false };
    let setup = async {
        let mut conn = connect(config).await?;
        join(&mut conn, config).await?;
        await_subscribed(&mut conn, config).await?;
        Ok::<Conn, Lost>(conn)
    };
    let deadline = tokio::time::timeout(config.join_timeout, setup);
    let mut conn = tokio::select! {
        result = deadline => match result {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => return lost(e),
            Err(_) => return lost(Lost::JoinTimeout),
        },
        _ = stop.cancelled() => return Ended::Stopped,
    };
    *generation += 1;
    tracing::info!(generation = *generation, topic = %config.topic, "upstream subscribed to PostgreSQL changes");
    if events.send(UpstreamEvent::Live { generation: *generation }).await.is_err() {
        return Ended::Stopped;
    }
    let mut typing =
        typing.map(|link| Typing { link, channel: TypingChannel::new(broadcast::typing_topic(&config.topic)) });
    match pump(&mut conn, config, events, stop, &mut typing).await {
        Ok(()) => {
            leave(&mut conn, config).await;
            Ended::Stopped
        }
        Err(lost) => Ended::Lost { lost, was_live: true },
    }
}

/// Phase 1: the socket (apikey and serializer version in the query).
async fn connect(config: &UpstreamConfig) -> Result<Conn, Lost> {
    let url =
        format!("{}?apikey={}&vsn={}", config.websocket_url, urlencoding::encode(&config.apikey), config.vsn.as_str());
    // disable_nagle: heartbeats and leaves are small writes that must not wait for an ACK.
    match tokio_tungstenite::connect_async_with_config(url, None, true).await {
        Ok((ws, _)) => Ok(Conn { ws, vsn: config.vsn, next_ref: 0, join_ref: None }),
        Err(WsError::Http(response)) => match response.status().as_u16() {
            status @ (401 | 403) => Err(Lost::BadApiKey(status)),
            status => Err(Lost::Refused(status)),
        },
        Err(other) => Err(Lost::Connect(other.to_string())),
    }
}

/// Phase 2: `phx_join` with our bindings and the service token; the reply must echo them.
async fn join(conn: &mut Conn, config: &UpstreamConfig) -> Result<(), Lost> {
    let bindings: Vec<Value> = config.bindings.iter().map(Binding::to_json).collect();
    let payload = json!({
        "config": {"broadcast": {"ack": false, "self": false}, "presence": {"key": "", "enabled": false},
                   "postgres_changes": bindings, "private": false},
        "access_token": config.access_token,
    });
    // phx_join carries its own ref as join_ref in Phoenix; later pushes name it.
    let reference = conn.push(None, &config.topic, "phx_join", payload).await?;
    conn.join_ref = Some(reference);
    loop {
        let frame = conn.next_frame().await?;
        if frame.topic != config.topic {
            continue;
        }
        match frame.event.as_str() {
            "phx_reply" if frame.reference == conn.join_ref => return check_join_reply(&frame.payload, config),
            "system" => channel_status(&frame.payload)?,
            "phx_error" => return Err(Lost::ChannelCrashed),
            "phx_close" => return Err(Lost::ChannelClosed),
            _ => {}
        }
    }
}

fn check_join_reply(payload: &Value, config: &UpstreamConfig) -> Result<(), Lost> {
    if payload.get("status").and_then(Value::as_str) != Some("ok") {
        let reason = payload.pointer("/response/reason").and_then(Value::as_str).unwrap_or("no reason given");
        return Err(Lost::JoinRefused(reason.to_string()));
    }
    let echoed = payload.pointer("/response/postgres_changes").and_then(Value::as_array);
    let matches = echoed.is_some_and(|echoed| {
        echoed.len() == config.bindings.len() && config.bindings.iter().zip(echoed).all(|(b, s)| b.echoed_by(s))
    });
    if matches {
        Ok(())
    } else {
        Err(Lost::BindingMismatch)
    }
}

/// A `system` message: an error status loses the channel.
fn channel_status(payload: &Value) -> Result<(), Lost> {
    if payload.get("status").and_then(Value::as_str) == Some("error") {
        let message = payload.get("message").and_then(Value::as_str).unwrap_or("unknown");
        return Err(Lost::System(message.to_string()));
    }
    Ok(())
}

/// Phase 3: only Realtime's "Subscribed to PostgreSQL" makes the subscription live.
async fn await_subscribed(conn: &mut Conn, config: &UpstreamConfig) -> Result<(), Lost> {
    loop {
        let frame =
            conn.next_frame().await.map_err(|e| if matches!(e, Lost::Closed(_)) { e } else { Lost::NotConfirmed })?;
        if frame.topic != config.topic {
            continue;
        }
        match frame.event.as_str() {
            "system" => {
                channel_status(&frame.payload)?;
                if frame.payload.get("extension").and_then(Value::as_str) == Some("postgres_changes") {
                    return Ok(());
                }
            }
            "phx_error" => return Err(Lost::ChannelCrashed),
            "phx_close" => return Err(Lost::ChannelClosed),
            _ => {}
        }
    }
}

/// The typing side of the socket: the relay's end and the typing channel's state.
struct Typing<'a> {
    link: &'a mut RelayLink,
    channel: TypingChannel,
}

impl Typing<'_> {
    /// Sends the typing channel's `phx_join` (its reply comes through [`Typing::on_frame`]).
    async fn join(&mut self, conn: &mut Conn, config: &UpstreamConfig) -> Result<(), Lost> {
        self.channel.rejoin_at = None;
        let payload = broadcast::join_payload(&config.access_token);
        let reference = conn.push(None, &self.channel.topic, "phx_join", payload).await?;
        self.channel.join_ref = Some(reference);
        Ok(())
    }

    /// One signal out as a Realtime Broadcast on the typing channel.
    async fn send(&mut self, conn: &mut Conn, signal: &Signal) -> Result<(), Lost> {
        let join_ref = self.channel.join_ref.clone();
        conn.push(join_ref, &self.channel.topic, "broadcast", broadcast::push_payload(signal)).await?;
        self.link.sent();
        Ok(())
    }

    fn on_frame(&mut self, frame: &Frame) {
        match self.channel.on_frame(frame) {
            Seen::Signal(signal) => self.link.received(signal),
            Seen::Joined => {
                let refusals = std::mem::take(&mut self.channel.refusals);
                tracing::info!(topic = %self.channel.topic, refusals, "joined the typing channel");
            }
            Seen::Refused(reason) => {
                self.channel.refusals = self.channel.refusals.saturating_add(1);
                let refusals = self.channel.refusals;
                if refusals == 1 || refusals.is_multiple_of(broadcast::REFUSALS_LOGGED_EVERY) {
                    tracing::warn!(topic = %self.channel.topic, %reason, refusals, "Realtime refused the typing channel; typing stays on this instance until it is joined again (tried every 5 s, logged every 5 min)")
                } else {
                    tracing::debug!(topic = %self.channel.topic, %reason, refusals, "Realtime refused the typing channel again")
                }
            }
            Seen::Lost(why) => {
                tracing::warn!(topic = %self.channel.topic, why, "typing channel lost; joining it again")
            }
            Seen::Other => {}
        }
    }
}

/// The next signal to send while the typing channel is joined; pending otherwise.
async fn next_signal(typing: &mut Option<Typing<'_>>) -> Option<Signal> {
    match typing {
        Some(t) if t.channel.joined => t.link.next_outbound().await,
        _ => std::future::pending().await,
    }
}

/// Resolves at `at`; pending without one.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Phase 4: heartbeats, changes and typing until the channel is lost (Err) or the gateway stops
/// (Ok).
async fn pump(
    conn: &mut Conn,
    config: &UpstreamConfig,
    events: &mpsc::Sender<UpstreamEvent>,
    stop: &CancellationToken,
    typing: &mut Option<Typing<'_>>,
) -> Result<(), Lost> {
    let every = config.heartbeat_interval;
    let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    let mut pending: Option<String> = None;
    if let Some(t) = typing.as_mut() {
        t.join(conn, config).await?;
    }
    loop {
        let rejoin_at = typing.as_ref().and_then(|t| t.channel.rejoin_at);
        let frame = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = heartbeat.tick() => {
                if pending.is_some() {
                    return Err(Lost::HeartbeatMissing);
                }
                pending = Some(conn.push(None, "phoenix", "heartbeat", json!({})).await?);
                continue;
            }
            signal = next_signal(typing) => {
                if let (Some(t), Some(signal)) = (typing.as_mut(), signal) {
                    t.send(conn, &signal).await?;
                }
                continue;
            }
            _ = sleep_until(rejoin_at) => {
                if let Some(t) = typing.as_mut() {
                    t.join(conn, config).await?;
                }
                continue;
            }
            frame = conn.next_frame() => frame?,
        };
        if frame.topic == "phoenix" {
            if frame.event == "phx_reply" && frame.reference.is_some() && frame.reference == pending {
                pending = None;
            }
            continue;
        }
        if let Some(t) = typing.as_mut().filter(|t| t.channel.topic == frame.topic) {
            t.on_frame(&frame);
            continue;
        }
        if frame.topic != config.topic {
            continue;
        }
        match frame.event.as_str() {
            "postgres_changes" => {
                for event in decode_payload(&frame.payload) {
                    if events.send(event).await.is_err() {
                        return Ok(());
                    }
                }
            }
            "system" => channel_status(&frame.payload)?,
            "phx_error" => return Err(Lost::ChannelCrashed),
            "phx_close" => return Err(Lost::ChannelClosed),
            _ => {}
        }
    }
}

/// A clean `phx_leave` on shutdown (bounded), then the socket's close.
async fn leave(conn: &mut Conn, config: &UpstreamConfig) {
    let join_ref = conn.join_ref.clone();
    let Ok(reference) = conn.push(join_ref, &config.topic, "phx_leave", json!({})).await else { return };
    let wait = async {
        while let Ok(frame) = conn.next_frame().await {
            if frame.event == "phx_reply" && frame.reference.as_deref() == Some(reference.as_str()) {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), wait).await;
    let _ = conn.ws.close(None).await;
    tracing::info!(topic = %config.topic, "left the upstream channel");
}
