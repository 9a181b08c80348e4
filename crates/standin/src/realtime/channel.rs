//! The feed's side of a socket: the channels it has joined, the handle the feed routes through
//! (a bounded queue and a kill switch), and routing one change to one socket — a push per
//! joined channel with a matching binding, the service role's text shared, a user-token
//! channel's shaped when written. Routing only ever `try_send`s; it must never wait on a socket.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{mpsc, Notify};

use super::binding::{text_of, Binding};
use super::feed::Change;
use super::frame::{encode_push_raw, Vsn};
use super::rls::{RowCheck, Subscriber};
use super::view::UserView;

/// A joined channel.
#[derive(Debug, Clone)]
pub struct Channel {
    pub topic: String,
    pub join_ref: Option<String>,
    pub bindings: Vec<Binding>,
    /// The access token the channel currently holds, and when it expires (Unix seconds).
    pub token: String,
    pub token_exp: i64,
    /// Who RLS checks run as; `None` for the service role (BYPASSRLS).
    pub subscriber: Option<Arc<Subscriber>>,
    /// `config.private`: a private channel (authorized by RLS on `realtime.messages`).
    pub private: bool,
    /// `config.broadcast.self`: the channel's own broadcasts come back to it.
    pub broadcast_self: bool,
    /// `config.broadcast.ack`: each broadcast is answered with a `phx_reply`.
    pub broadcast_ack: bool,
}

/// A change event on its way to the socket.
pub struct Outgoing {
    /// Not to be written before this instant (the latency fault control).
    pub due: Option<Instant>,
    pub text: String,
    /// For a user-token channel: the change, shaped for the subscriber's role (column
    /// privileges, RLS) when written; `text` is unused then.
    pub view: Option<Box<UserView>>,
    /// A binary frame (a user broadcast on vsn 2.0.0); `text` is unused then.
    pub binary: Option<Vec<u8>>,
}

/// What the feed needs to route to a socket.
pub struct SocketHandle {
    pub vsn: Vsn,
    pub channels: Mutex<Vec<Channel>>,
    pub changes: mpsc::Sender<Outgoing>,
    /// Drops the socket at once, without a close handshake (as a network failure would).
    pub kill: Notify,
}

/// The RLS check of an INSERT or UPDATE for a user-token subscriber: the row by primary key.
pub fn row_check(who: &Arc<Subscriber>, change: &Change) -> RowCheck {
    let record = change.record.as_ref();
    let keys = change
        .keys
        .iter()
        .map(|k| {
            let ty = change.columns.iter().find(|(n, _)| n == k).map_or("text", |(_, t)| t.as_str());
            let value = record.and_then(|r| r.get(k)).map(text_of);
            (k.clone(), ty.to_string(), value)
        })
        .collect();
    RowCheck { schema: change.schema.clone(), table: change.table.clone(), keys, who: who.clone() }
}

/// Routes one change to this socket: one `postgres_changes` push per joined channel with a
/// matching binding. `data_json` is the change's `data` object, serialized once for everyone
/// with the service role; a user-token channel gets the change shaped for its role when it is
/// written ([`UserView`]). Synthetic rows do not exist: they go to everyone as they are.
pub fn route(handle: &SocketHandle, change: &Change, data_json: &str, due: Option<Instant>) -> Vec<Outgoing> {
    let Ok(channels) = handle.channels.lock() else { return Vec::new() };
    let mut out = Vec::new();
    for channel in channels.iter() {
        let ids: Vec<String> =
            channel.bindings.iter().filter(|b| b.matches(change)).map(|b| b.id.to_string()).collect();
        if ids.is_empty() {
            continue;
        }
        let ids = ids.join(",");
        if let Some(who) = channel.subscriber.as_ref().filter(|_| !change.synthetic) {
            let view = UserView {
                change: change.clone(),
                ids,
                join_ref: channel.join_ref.clone(),
                topic: channel.topic.clone(),
                vsn: handle.vsn,
                who: who.clone(),
            };
            out.push(Outgoing { due, text: String::new(), view: Some(Box::new(view)), binary: None });
            continue;
        }
        let payload = format!("{{\"ids\":[{ids}],\"data\":{data_json}}}");
        let text =
            encode_push_raw(channel.join_ref.as_deref(), &channel.topic, "postgres_changes", &payload, handle.vsn);
        out.push(Outgoing { due, text, view: None, binary: None });
    }
    out
}

/// Joined channels of all sockets, for stats.
pub fn channel_count<'a>(sockets: impl Iterator<Item = &'a Arc<SocketHandle>>) -> usize {
    sockets.map(|s| s.channels.lock().map(|c| c.len()).unwrap_or(0)).sum()
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::super::binding::fixtures::{binding, change};
    use super::*;

    #[test]
    fn routes_one_push_per_matching_channel_with_binding_ids() {
        let (tx, _rx) = mpsc::channel(4);
        let channel = |topic: &str, bindings: Vec<Binding>| Channel {
            topic: topic.into(),
            join_ref: Some("1".into()),
            bindings,
            token: String::new(),
            token_exp: i64::MAX,
            subscriber: None,
            private: false,
            broadcast_self: false,
            broadcast_ack: false,
        };
        let mut a = binding("INSERT", Some("messages"), None);
        a.id = 7;
        let mut b = binding("*", None, Some("thread_id=eq.a"));
        b.id = 8;
        let handle = SocketHandle {
            vsn: Vsn::V2,
            channels: Mutex::new(vec![
                channel("realtime:x", vec![a, b]),
                channel("realtime:y", vec![binding("DELETE", None, None)]),
            ]),
            changes: tx,
            kill: Notify::new(),
        };
        let c = change("INSERT", "a");
        let out = route(&handle, &c, &c.data_json(), None);
        assert_eq!(out.len(), 1);
        assert!(out[0].view.is_none(), "service role: no RLS check");
        let v: Value = serde_json::from_str(&out[0].text).expect("json");
        assert_eq!(v[0], "1");
        assert_eq!(v[1], Value::Null);
        assert_eq!(v[2], "realtime:x");
        assert_eq!(v[3], "postgres_changes");
        assert_eq!(v[4]["ids"], json!([7, 8]));
        assert_eq!(v[4]["data"]["type"], "INSERT");
        assert_eq!(v[4]["data"]["errors"], Value::Null);
    }

    #[test]
    fn user_channels_shape_changes_for_their_role_and_check_by_primary_key() {
        let who = Arc::new(Subscriber { role: "authenticated".into(), claims: "{}".into() });
        let check = row_check(&who, &change("UPDATE", "a"));
        assert_eq!(check.keys, vec![("id".to_string(), "uuid".to_string(), Some("r1".to_string()))]);
        let (tx, _rx) = mpsc::channel(4);
        let channel = Channel {
            topic: "realtime:x".into(),
            join_ref: None,
            bindings: vec![binding("*", None, None)],
            token: String::new(),
            token_exp: i64::MAX,
            subscriber: Some(who),
            private: false,
            broadcast_self: false,
            broadcast_ack: false,
        };
        let handle =
            SocketHandle { vsn: Vsn::V2, channels: Mutex::new(vec![channel]), changes: tx, kill: Notify::new() };
        for kind in ["INSERT", "DELETE"] {
            let c = change(kind, "a");
            let out = route(&handle, &c, &c.data_json(), None);
            assert!(out.len() == 1 && out[0].view.is_some() && out[0].text.is_empty(), "{kind}: shaped when written");
        }
        let mut synthetic = change("INSERT", "a");
        synthetic.synthetic = true;
        let out = route(&handle, &synthetic, &synthetic.data_json(), None);
        assert!(out[0].view.is_none(), "a synthetic row has nothing to check");
    }
}
