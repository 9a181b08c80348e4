//! What a client sends on its socket: `ping`, `subscribe_thread`, `unsubscribe_thread`,
//! `access_token` and `typing`, each answered on the same socket.
//!
//! Owns the per-socket message rate, the access checks of client frames (RLS through the store,
//! with the user's own token, within the per-user budget; `typing` admits a member the directory
//! knows at once), and the token's refresh. Every refusal is an error frame; only the rate limit
//! and a binary or oversized frame close the socket. It must never let a client subscribe to, or
//! type in, a thread RLS does not let the user read, and never accept a token of another user.

use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::{Error as WsError, Utf8Bytes};
use uuid::Uuid;

use super::socket::{Heartbeat, Inbound};
use super::{Flow, Session};
use crate::close;
use crate::metrics::{Budget, TypingOutcome};
use crate::protocol::{parse_client_message, ClientMessage, ServerMessage};

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    pub(super) async fn on_inbound(&mut self, incoming: Inbound, clock: &mut Heartbeat) -> Flow {
        match incoming {
            Inbound::Text(text) => self.on_text(text, clock).await,
            Inbound::Binary => Flow::Close(close::BINARY),
            Inbound::Control => Flow::Continue,
            Inbound::TooBig => Flow::Close(close::TOO_BIG),
            Inbound::Gone => Flow::Gone,
        }
    }

    async fn on_text(&mut self, text: Utf8Bytes, clock: &mut Heartbeat) -> Flow {
        if !self.rate.allow() {
            tracing::warn!(session = self.shared.id, user = %self.shared.user_id, "client exceeded the message rate limit");
            return Flow::Close(close::RATE);
        }
        let result = match parse_client_message(text.as_str()) {
            Err(e) => self.error(&e.to_string()).await,
            Ok(ClientMessage::Ping) => self.send_json(ServerMessage::Pong).await,
            // Rare and large futures are boxed so that an idle session's state stays small.
            Ok(ClientMessage::SubscribeThread { thread_id }) => Box::pin(self.subscribe(thread_id)).await,
            Ok(ClientMessage::UnsubscribeThread { thread_id }) => Box::pin(self.unsubscribe(thread_id)).await,
            Ok(ClientMessage::AccessToken { token }) => Box::pin(self.refresh_token(token, clock)).await,
            Ok(ClientMessage::Typing { thread_id }) => Box::pin(self.typing(thread_id)).await,
        };
        match result {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Gone,
        }
    }

    async fn subscribe(&mut self, thread_id: Uuid) -> Result<(), WsError> {
        if !self.ctx.budgets.subscribe_check(self.shared.user_id) {
            self.ctx.metrics.fairness.budget_hit(Budget::SubscribeCheck);
            tracing::info!(session = self.shared.id, user = %self.shared.user_id, "subscribe_thread over the user's budget");
            return self.error(&format!("{} (thread {thread_id})", crate::fair::SUBSCRIBE_LIMITED)).await;
        }
        let started = Instant::now();
        let allowed = self.ctx.store.can_read_thread(&self.token.text(), thread_id).await;
        self.ctx.metrics.rls_checked(started.elapsed());
        match allowed {
            Ok(true) => match self.ctx.hub.subscribe_thread(&self.shared, thread_id) {
                Ok(()) => {
                    tracing::debug!(session = self.shared.id, thread = %thread_id, "subscribed to thread");
                    self.send_json(ServerMessage::ThreadSubscribed { thread_id }).await
                }
                Err(e) => self.error(&e.to_string()).await,
            },
            Ok(false) => self.error(&format!("Access denied to thread {thread_id}")).await,
            Err(e) => {
                tracing::warn!(session = self.shared.id, thread = %thread_id, error = %e, "thread access check failed");
                self.error(crate::error::access_check_frame(&e)).await
            }
        }
    }

    /// `unsubscribe_thread`: a thread this session subscribed to (or already muted) is dropped at
    /// once; any other is checked as `subscribe_thread` is (RLS, with the user's token, within
    /// the same per-user budget), so no state is kept for a thread the user may not read.
    async fn unsubscribe(&mut self, thread_id: Uuid) -> Result<(), WsError> {
        let known = self.shared.is_subscribed(&thread_id) || self.shared.is_muted(&thread_id);
        if !known {
            // The same per-user budget as subscribe_thread's checks: one RLS query each.
            if !self.ctx.budgets.subscribe_check(self.shared.user_id) {
                self.ctx.metrics.fairness.budget_hit(Budget::SubscribeCheck);
                self.ctx.metrics.unsubscribe_refused("over_budget");
                return self.error(&format!("{} (thread {thread_id})", crate::fair::SUBSCRIBE_LIMITED)).await;
            }
            let started = Instant::now();
            let allowed = self.ctx.store.can_read_thread(&self.token.text(), thread_id).await;
            self.ctx.metrics.rls_checked(started.elapsed());
            match allowed {
                Ok(true) => {}
                Ok(false) => {
                    self.ctx.metrics.unsubscribe_refused("access_denied");
                    return self.error(&format!("Access denied to thread {thread_id}")).await;
                }
                Err(e) => {
                    tracing::warn!(session = self.shared.id, thread = %thread_id, error = %e, "thread access check failed");
                    self.ctx.metrics.unsubscribe_refused("check_failed");
                    return self.error(crate::error::access_check_frame(&e)).await;
                }
            }
        }
        match self.ctx.hub.unsubscribe_thread(&self.shared, thread_id) {
            Ok(()) => self.send_json(ServerMessage::ThreadUnsubscribed { thread_id }).await,
            Err(e) => {
                self.ctx.metrics.unsubscribe_refused("too_many");
                self.error(&e.to_string()).await
            }
        }
    }

    /// `typing`: one per user and thread per 2 s (on this instance, over all the user's sockets;
    /// counted whether or not the thread is the user's), then membership: a member the directory
    /// knows is admitted at once, anyone else gets the same RLS check as `subscribe_thread` with
    /// the socket's token (a database round trip per frame overloaded it in the typing benchmark), then to the thread's other participants on
    /// every instance. A refusal is an error frame; the socket stays open.
    async fn typing(&mut self, thread_id: Uuid) -> Result<(), WsError> {
        let metrics = &self.ctx.metrics.typing;
        if !self.ctx.typing.admit(self.shared.user_id, thread_id) {
            metrics.frame(TypingOutcome::RateLimited);
            return self.error(&format!("{} (thread {thread_id})", crate::typing::limiter::LIMITED)).await;
        }
        let allowed = if self.ctx.typing.known_member(&thread_id, &self.shared.user_id) {
            Ok(true)
        } else {
            let started = Instant::now();
            let allowed = self.ctx.store.can_read_thread(&self.token.text(), thread_id).await;
            self.ctx.metrics.rls_checked(started.elapsed());
            allowed
        };
        match allowed {
            Ok(true) => {
                self.ctx.metrics.typing.frame(TypingOutcome::Accepted);
                self.ctx.typing.publish(thread_id, self.shared.user_id);
                Ok(())
            }
            Ok(false) => {
                self.ctx.metrics.typing.frame(TypingOutcome::Denied);
                self.error(&format!("Access denied to thread {thread_id}")).await
            }
            Err(e) => {
                self.ctx.metrics.typing.frame(TypingOutcome::CheckFailed);
                tracing::warn!(session = self.shared.id, thread = %thread_id, error = %e, "typing access check failed");
                self.error(crate::error::access_check_frame(&e)).await
            }
        }
    }

    async fn refresh_token(&mut self, token: String, clock: &mut Heartbeat) -> Result<(), WsError> {
        match self.ctx.verifier.verify(&token).await {
            Ok(identity) if identity.user_id == self.shared.user_id => {
                clock.expires_in(self.ctx.verifier.remaining(&identity));
                self.identity = identity;
                self.token = super::HeldToken::new(&token);
                tracing::debug!(session = self.shared.id, "access token refreshed");
                Ok(())
            }
            Ok(_) => self.error("Access token belongs to another user").await,
            Err(e) => {
                self.ctx.metrics.auth_failed("token_refresh", e.label());
                self.error(&format!("Invalid access token: {e}")).await
            }
        }
    }
}
