//! User claims (`../shared/ably-chat.md` §5.10): trusted, per-channel strings a token carries
//! for the server to attach to what its holder publishes, as `extras.userClaim`. Both the
//! broker (its own Ably JWTs) and the auth plugin (Auth0 tokens) read them with the one rule
//! here; where the value goes on a message is the broker's business.
//!
//! Claim names: `ably.room.<room>` applies to the chat room's channel `<room>::$chat`,
//! `ably.channel.<channel>` to exactly that channel. Only string values count. When two
//! claims name one channel, the later one read wins (see [`UserClaims::extend_from`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Map, Value};

/// The prefix of a claim naming a chat room.
pub const ROOM_PREFIX: &str = "ably.room.";
/// The prefix of a claim naming a channel.
pub const CHANNEL_PREFIX: &str = "ably.channel.";
/// The suffix that turns a room name into its channel (`<room>::$chat`).
pub const CHAT_SUFFIX: &str = "::$chat";

/// Most claims one token contributes; the rest are ignored, so a token cannot make every
/// connection's identity arbitrarily large.
const MAX_CLAIMS: usize = 1000;

/// A token's user claims, by the exact channel name they apply to. Cheap to clone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserClaims(Option<Arc<BTreeMap<String, String>>>);

impl UserClaims {
    /// The `ably.room.*` and `ably.channel.*` claims among a token's top-level claims.
    pub fn from_claims(claims: &Map<String, Value>) -> UserClaims {
        let mut found = UserClaims::default();
        found.extend_from(claims, false);
        found
    }

    /// Adds the claims of `object` to these, replacing any for the same channel: keys
    /// `ably.room.<room>` and `ably.channel.<channel>` as in a token, and, when `plain_names`
    /// holds, any other key as a channel name (the Auth0 `user_claims` object). Rooms are read
    /// before channels, so `ably.channel.<room>::$chat` wins over `ably.room.<room>`.
    pub fn extend_from(&mut self, object: &Map<String, Value>, plain_names: bool) {
        let strings = || {
            object
                .iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.as_str(), v)))
        };
        let rooms = strings().filter_map(|(k, v)| {
            let room = k.strip_prefix(ROOM_PREFIX).filter(|r| !r.is_empty())?;
            Some((format!("{room}{CHAT_SUFFIX}"), v))
        });
        let channels = strings().filter_map(|(k, v)| {
            if k.starts_with(ROOM_PREFIX) {
                return None;
            }
            let channel = match k.strip_prefix(CHANNEL_PREFIX) {
                Some(channel) => channel,
                None if plain_names => k,
                None => return None,
            };
            (!channel.is_empty()).then(|| (channel.to_owned(), v))
        });
        let found: Vec<(String, &str)> = rooms.chain(channels).take(MAX_CLAIMS).collect();
        if found.is_empty() {
            return;
        }
        let mut map = self.0.as_deref().cloned().unwrap_or_default();
        for (channel, value) in found {
            if map.len() >= MAX_CLAIMS && !map.contains_key(&channel) {
                continue;
            }
            map.insert(channel, value.to_owned());
        }
        self.0 = Some(Arc::new(map));
    }

    /// The claim for `channel`, if the token has one.
    pub fn get(&self, channel: &str) -> Option<&str> {
        self.0.as_ref()?.get(channel).map(String::as_str)
    }

    /// Every claim, as (channel, value), in channel order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0
            .iter()
            .flat_map(|m| m.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    }

    /// Whether the token has no claims.
    pub fn is_empty(&self) -> bool {
        self.0.as_ref().is_none_or(|m| m.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => unreachable!(),
        }
    }

    #[test]
    fn rooms_and_channels_by_exact_name() {
        let claims = UserClaims::from_claims(&object(json!({
            "ably.room.r1": "mod",
            "ably.channel.news": "reader",
            "ably.room.n": 5,
            "ably.room.": "nameless",
            "x-ably-clientId": "alice",
            "plain": "ignored at the top level",
        })));
        assert_eq!(claims.get("r1::$chat"), Some("mod"));
        assert_eq!(claims.get("r1"), None);
        assert_eq!(claims.get("news"), Some("reader"));
        assert_eq!(claims.get("n::$chat"), None);
        assert_eq!(claims.get("plain"), None);
        assert!(UserClaims::from_claims(&Map::new()).is_empty());
    }

    #[test]
    fn channel_claims_and_later_objects_win() {
        let mut claims = UserClaims::from_claims(&object(json!({
            "ably.room.r": "room",
            "ably.channel.r::$chat": "channel",
            "ably.channel.a": "top",
        })));
        assert_eq!(claims.get("r::$chat"), Some("channel"));
        claims.extend_from(&object(json!({"a": "object", "ably.room.b": "b"})), true);
        assert_eq!(claims.get("a"), Some("object"));
        assert_eq!(claims.get("b::$chat"), Some("b"));
    }
}
