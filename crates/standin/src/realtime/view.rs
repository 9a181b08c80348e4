//! What a user-token channel receives of a change: Realtime's per-role shaping, decided when the
//! change is written to the socket.
//!
//! Realtime (`realtime.apply_rls`) first asks which columns the subscriber's role may SELECT. An
//! INSERT or UPDATE whose primary key the role may not read becomes `Error 401: Unauthorized`
//! with no row (a table without a primary key: `Error 400`); otherwise the row is checked under
//! RLS as the subscriber and sent with only the readable columns. A DELETE is never checked
//! under RLS (Realtime cannot: the row is gone) and carries only the readable key columns in
//! `old_record`, or null. Owns that decision; never sends a column the role may not select, and
//! never checks anything for the service role (its channels never get here).

use std::sync::Arc;

use super::feed::Change;
use super::frame::{encode_push_raw, Vsn};
use super::rls::{Rls, Subscriber};

/// A change bound for one user-token channel, shaped when it is written.
pub struct UserView {
    pub change: Change,
    /// The matching binding ids, comma-separated.
    pub ids: String,
    pub join_ref: Option<String>,
    pub topic: String,
    pub vsn: Vsn,
    pub who: Arc<Subscriber>,
}

/// What the role gets of the change.
#[derive(Debug, PartialEq)]
pub enum Shape {
    /// An error event without a row.
    Refused(&'static str),
    /// The readable columns, sent only if RLS lets the subscriber see the row.
    Checked,
    /// The readable columns, unchecked (DELETE).
    Unchecked,
}

/// Realtime's decision for a role that may select `selectable` columns.
pub fn shape(change: &Change, selectable: &dyn Fn(&str) -> bool) -> Shape {
    if change.kind == "DELETE" {
        return Shape::Unchecked;
    }
    if change.keys.is_empty() {
        return Shape::Refused("Error 400: Bad Request, no primary key");
    }
    if !change.keys.iter().all(|k| selectable(k)) {
        return Shape::Refused("Error 401: Unauthorized");
    }
    Shape::Checked
}

impl UserView {
    /// The frame to write, or None when the subscriber may not see the row.
    pub async fn render(&self, rls: &Rls) -> Option<String> {
        let change = &self.change;
        let columns = rls.selectable(&self.who.role, &change.schema, &change.table).await;
        let selectable = |c: &str| columns.contains(c);
        let data = match shape(change, &selectable) {
            Shape::Refused(error) => change.refused_json(error),
            Shape::Unchecked => change.data_json_for(&selectable),
            Shape::Checked => {
                let check = super::channel::row_check(&self.who, change);
                if !rls.visible(&check).await {
                    return None;
                }
                change.data_json_for(&selectable)
            }
        };
        let payload = format!("{{\"ids\":[{}],\"data\":{data}}}", self.ids);
        Some(encode_push_raw(self.join_ref.as_deref(), &self.topic, "postgres_changes", &payload, self.vsn))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(kind: &'static str, keys: &[&str]) -> Change {
        Change {
            schema: "public".into(),
            table: "chat_membership_events".into(),
            kind,
            record: None,
            old_record: None,
            columns: vec![("id".into(), "int8".into()), ("user_id".into(), "uuid".into())],
            keys: keys.iter().map(|k| k.to_string()).collect(),
            commit_timestamp: "2026-01-01T00:00:00.000Z".into(),
            synthetic: false,
        }
    }

    #[test]
    fn an_unreadable_key_is_refused_and_deletes_are_never_checked() {
        let none = |_: &str| false;
        let all = |_: &str| true;
        assert_eq!(shape(&change("INSERT", &["id"]), &none), Shape::Refused("Error 401: Unauthorized"));
        assert_eq!(shape(&change("UPDATE", &["id"]), &none), Shape::Refused("Error 401: Unauthorized"));
        assert_eq!(shape(&change("INSERT", &["id"]), &all), Shape::Checked);
        assert_eq!(shape(&change("INSERT", &[]), &all), Shape::Refused("Error 400: Bad Request, no primary key"));
        assert_eq!(shape(&change("DELETE", &["id"]), &none), Shape::Unchecked);
    }
}
