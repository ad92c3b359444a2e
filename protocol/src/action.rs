//! Action numbers: a ProtocolMessage's [`Action`] (§3.1) and a PresenceMessage's
//! [`PresenceAction`] (§6.1). Both travel as plain integers in JSON and msgpack, and unknown
//! numbers survive decoding as an `Unknown` variant so the broker can answer them with an error
//! instead of dropping the frame.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The `action` of a [`crate::ProtocolMessage`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Action {
    /// 0: keep-alive, and the reply to a client `ping()` when it carries an `id`.
    #[default]
    Heartbeat,
    /// 1: publishes acknowledged.
    Ack,
    /// 2: publishes refused.
    Nack,
    /// 3: unused by ably-js.
    Connect,
    /// 4: the connection is established (also the reply to a client AUTH).
    Connected,
    /// 5: the client drops this transport but keeps its connection state.
    Disconnect,
    /// 6: the server drops this transport; the client resumes.
    Disconnected,
    /// 7: the client closes the connection for good.
    Close,
    /// 8: the reply to CLOSE; never sent unsolicited.
    Closed,
    /// 9: a connection error (no `channel`) or a channel error (with `channel`).
    Error,
    /// 10: attach a channel.
    Attach,
    /// 11: the channel is attached.
    Attached,
    /// 12: detach a channel.
    Detach,
    /// 13: the channel is detached.
    Detached,
    /// 14: presence events.
    Presence,
    /// 15: messages.
    Message,
    /// 16: a page of the presence set.
    Sync,
    /// 17: re-authentication (server asks, client answers with a token).
    Auth,
    /// 18: ignored.
    Activate,
    /// 21: annotations of messages, both ways (RTAN1–4, `../shared/ably-chat.md` §4).
    Annotation,
    /// Any number this crate does not name (LiveObjects, future actions).
    Unknown(u64),
}

impl Action {
    /// The action's number on the wire.
    pub fn code(self) -> u64 {
        match self {
            Action::Heartbeat => 0,
            Action::Ack => 1,
            Action::Nack => 2,
            Action::Connect => 3,
            Action::Connected => 4,
            Action::Disconnect => 5,
            Action::Disconnected => 6,
            Action::Close => 7,
            Action::Closed => 8,
            Action::Error => 9,
            Action::Attach => 10,
            Action::Attached => 11,
            Action::Detach => 12,
            Action::Detached => 13,
            Action::Presence => 14,
            Action::Message => 15,
            Action::Sync => 16,
            Action::Auth => 17,
            Action::Activate => 18,
            Action::Annotation => 21,
            Action::Unknown(n) => n,
        }
    }

    /// The action for a wire number.
    pub fn from_code(code: u64) -> Action {
        match code {
            0 => Action::Heartbeat,
            1 => Action::Ack,
            2 => Action::Nack,
            3 => Action::Connect,
            4 => Action::Connected,
            5 => Action::Disconnect,
            6 => Action::Disconnected,
            7 => Action::Close,
            8 => Action::Closed,
            9 => Action::Error,
            10 => Action::Attach,
            11 => Action::Attached,
            12 => Action::Detach,
            13 => Action::Detached,
            14 => Action::Presence,
            15 => Action::Message,
            16 => Action::Sync,
            17 => Action::Auth,
            18 => Action::Activate,
            21 => Action::Annotation,
            n => Action::Unknown(n),
        }
    }
}

impl Serialize for Action {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(self.code())
    }
}

impl<'de> Deserialize<'de> for Action {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        u64::deserialize(deserializer).map(Action::from_code)
    }
}

/// The `action` of a [`crate::PresenceMessage`] (§6.1).
///
/// Unknown numbers decode as [`PresenceAction::Unknown`] rather than failing, exactly as the
/// raw `u64` this replaces did: a client's PRESENCE item with such a number reaches the broker,
/// which refuses it with the same NACK (40000, "presence action N cannot be sent by a client") as
/// it does ABSENT and PRESENT. A number that is not an unsigned integer still fails decoding, as
/// before. [`PresenceAction::from_code`] never yields `Unknown` for a named number; build values
/// with it (or the named variants), not with `Unknown(1)`, which would not compare equal to
/// [`PresenceAction::Present`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum PresenceAction {
    /// 0: a tombstone in a client's presence map; the broker never sends it.
    #[default]
    Absent,
    /// 1: a member as listed by a SYNC page or a REST `presence.get()`.
    Present,
    /// 2: a member entered.
    Enter,
    /// 3: a member left.
    Leave,
    /// 4: a member changed its data.
    Update,
    /// Any other number, kept so it can be refused with its number.
    Unknown(u64),
}

impl PresenceAction {
    /// The action's number on the wire.
    pub fn code(self) -> u64 {
        match self {
            PresenceAction::Absent => 0,
            PresenceAction::Present => 1,
            PresenceAction::Enter => 2,
            PresenceAction::Leave => 3,
            PresenceAction::Update => 4,
            PresenceAction::Unknown(n) => n,
        }
    }

    /// The presence action for a wire number.
    pub fn from_code(code: u64) -> PresenceAction {
        match code {
            0 => PresenceAction::Absent,
            1 => PresenceAction::Present,
            2 => PresenceAction::Enter,
            3 => PresenceAction::Leave,
            4 => PresenceAction::Update,
            n => PresenceAction::Unknown(n),
        }
    }
}

impl Serialize for PresenceAction {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(self.code())
    }
}

impl<'de> Deserialize<'de> for PresenceAction {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        u64::deserialize(deserializer).map(PresenceAction::from_code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_named_action_round_trips_through_its_code() {
        for code in 0..=25 {
            assert_eq!(Action::from_code(code).code(), code);
        }
        assert_eq!(Action::from_code(15), Action::Message);
        assert_eq!(Action::from_code(21), Action::Annotation);
        assert_eq!(Action::from_code(19), Action::Unknown(19));
    }

    #[test]
    fn presence_actions_travel_as_their_numbers_in_json_and_msgpack() {
        let cases = [
            (PresenceAction::Absent, 0),
            (PresenceAction::Present, 1),
            (PresenceAction::Enter, 2),
            (PresenceAction::Leave, 3),
            (PresenceAction::Update, 4),
            (PresenceAction::Unknown(99), 99),
        ];
        for (action, code) in cases {
            let item = crate::PresenceMessage {
                action,
                client_id: Some("ann".into()),
                ..Default::default()
            };
            let json = serde_json::to_value(&item).unwrap();
            assert_eq!(json["action"], code);
            let back: crate::PresenceMessage = serde_json::from_value(json).unwrap();
            assert_eq!(back, item);

            let packed = rmp_serde::to_vec_named(&item).unwrap();
            let same_as_a_number =
                rmp_serde::to_vec_named(&serde_json::json!({"action": code, "clientId": "ann"}))
                    .unwrap();
            assert_eq!(packed, same_as_a_number);
            let back: crate::PresenceMessage = rmp_serde::from_slice(&packed).unwrap();
            assert_eq!(back, item);
        }
    }

    #[test]
    fn a_presence_action_that_is_not_a_number_does_not_decode() {
        for bad in [r#"{"action":"enter"}"#, r#"{"action":-1}"#, r#"{}"#] {
            assert!(
                serde_json::from_str::<crate::PresenceMessage>(bad).is_err(),
                "{bad}"
            );
        }
    }
}
