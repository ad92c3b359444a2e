//! The messages on the wire (§3.2, §6.1, §7.2): [`ProtocolMessage`] and the [`Message`] and
//! [`PresenceMessage`] it carries, with [`Data`] kept as string, binary or JSON. Unknown fields
//! are ignored and `null` reads as absent (§2). The payload encoding rules of §7.5 live here too:
//! inbound data is normalised to one canonical form, and binary is base64'd only for JSON.

use std::collections::BTreeMap;
use std::fmt;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use bytes::Bytes;
use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::action::{Action, PresenceAction};
use crate::error::{codes, ErrorInfo};

/// One frame of the realtime protocol (§3.2). Every field but `action` is optional.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProtocolMessage {
    /// What the frame means.
    pub action: Action,
    /// `<connectionId>:<msgSerial>` on MESSAGE/PRESENCE; the ping id on HEARTBEAT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The channel of channel-scoped actions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// An opaque position in the channel (§5.5); `<syncId>:<cursor>` on SYNC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel_serial: Option<String>,
    /// The client's own id on CONNECTED; the publisher's on MESSAGE and PRESENCE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_id: Option<String>,
    /// Legacy copy of `connectionDetails.connectionKey`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_key: Option<String>,
    /// CONNECTED only (§4.3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_details: Option<ConnectionDetails>,
    /// The client's per-connection publish counter; also ACK/NACK's first serial.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub msg_serial: Option<u64>,
    /// How many publishes an ACK/NACK completes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// The error of ERROR, NACK, DISCONNECTED, or a non-fatal note.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
    /// Bit field of [`crate::flags`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flags: Option<u64>,
    /// Milliseconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<i64>,
    /// The messages of a MESSAGE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages: Option<Vec<Message>>,
    /// The presence items of PRESENCE and SYNC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence: Option<Vec<PresenceMessage>>,
    /// Channel params on ATTACH/ATTACHED, as text (numbers and booleans arrive as their text).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "params_as_text"
    )]
    pub params: Option<BTreeMap<String, String>>,
    /// The new token of a client AUTH.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthDetails>,
    /// Per-publish results on ACK.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub res: Option<Vec<PublishResult>>,
    /// The annotations of ANNOTATION.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<Vec<Annotation>>,
}

impl ProtocolMessage {
    /// An empty frame with `action`.
    pub fn new(action: Action) -> Self {
        ProtocolMessage {
            action,
            ..Default::default()
        }
    }

    /// A frame with `action` for `channel`.
    pub fn for_channel(action: Action, channel: impl Into<String>) -> Self {
        ProtocolMessage {
            action,
            channel: Some(channel.into()),
            ..Default::default()
        }
    }

    /// True when a flag bit of [`crate::flags`] is set.
    pub fn has_flag(&self, flag: u64) -> bool {
        self.flags.unwrap_or(0) & flag != 0
    }

    /// The frame as a JSON client must see it: binary data base64'd (§7.5). Borrowed when
    /// nothing needs changing.
    pub fn for_json(&self) -> std::borrow::Cow<'_, ProtocolMessage> {
        let binary_messages = self
            .messages
            .iter()
            .flatten()
            .any(|m| matches!(m.data, Some(Data::Binary(_))));
        let binary_presence = self
            .presence
            .iter()
            .flatten()
            .any(|m| matches!(m.data, Some(Data::Binary(_))));
        let binary_annotations = self
            .annotations
            .iter()
            .flatten()
            .any(|a| matches!(a.data, Some(Data::Binary(_))));
        if !binary_messages && !binary_presence && !binary_annotations {
            return std::borrow::Cow::Borrowed(self);
        }
        let mut owned = self.clone();
        for m in owned.messages.iter_mut().flatten() {
            base64_binary(&mut m.data, &mut m.encoding);
        }
        for m in owned.presence.iter_mut().flatten() {
            base64_binary(&mut m.data, &mut m.encoding);
        }
        for a in owned.annotations.iter_mut().flatten() {
            base64_binary(&mut a.data, &mut a.encoding);
        }
        std::borrow::Cow::Owned(owned)
    }
}

/// The `connectionDetails` of CONNECTED (§4.3).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionDetails {
    /// The secret the client presents to resume.
    pub connection_key: String,
    /// The connection's clientId, `*` for a wildcard, absent for anonymous.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// The longest the server stays silent, in ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_idle_interval: Option<u64>,
    /// How long the server keeps the state of a dropped connection, in ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_state_ttl: Option<u64>,
    /// The largest publish accepted, in bytes (§7.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_message_size: Option<u64>,
    /// The largest frame accepted, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_frame_size: Option<u64>,
    /// Publishes per second a connection may send.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_inbound_rate: Option<u64>,
    /// Which server this is, for debugging.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_id: Option<String>,
}

/// `{accessToken}` of a client AUTH.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthDetails {
    /// The new token.
    pub access_token: String,
}

/// One entry of ACK `res`: the serials of one acknowledged ProtocolMessage (§7.3).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PublishResult {
    /// One serial per message, `null` where none was assigned.
    pub serials: Vec<Option<String>>,
}

/// A message published on a channel (§7.2).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Message {
    /// Unique id: set by the app (idempotent publishing) or `<connId>:<msgSerial>:<index>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The event name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The payload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Data>,
    /// The `/`-separated encoding steps applied to `data` (§7.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<String>,
    /// The publisher's clientId.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// The publisher's connectionId.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_id: Option<String>,
    /// REST only ("publish on behalf of"); accepted, never sent.
    #[serde(default, skip_serializing)]
    pub connection_key: Option<String>,
    /// Opaque metadata (push, headers, ref…).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extras: Option<serde_json::Value>,
    /// Milliseconds since the epoch when the broker accepted it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<i64>,
    /// Its position in the channel log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// 0 for a new message (message.create); see [`Message::UPDATE`] and the other actions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<u64>,
    /// Which version of the message this is (TM2s): on a create the message's own serial and
    /// timestamp; on an update, delete or append, the version's position and who made it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<MessageVersion>,
    /// On a summary and on a message read back (TM2u): `{"summary": {type: entry}}`, the
    /// aggregate of the message's annotations. The log's own annotation entries
    /// ([`Message::ANNOTATION`]) keep their type, action and count here instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<serde_json::Value>,
}

/// An annotation of a message (ably-js `Annotation`, RTAN, `../shared/ably-chat.md` §4, §5.6):
/// a reaction, a flag, a vote. The server aggregates annotations of a type into the message's
/// summary; the data travels unencrypted, as the server must read the type and name.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Annotation {
    /// Unique id: set by the app (idempotent publishing) or `<connId>:<msgSerial>:<index>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// 0 to create, 1 to delete ([`Annotation::CREATE`], [`Annotation::DELETE`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<u64>,
    /// The annotation's own position in the channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// The serial of the message it annotates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_serial: Option<String>,
    /// `<namespace>:<aggregation>.v1`, e.g. `reaction:distinct.v1`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// What is counted, e.g. the emoji of a reaction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// How many, for `multiple.v1` (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// Who annotated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// From which connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_id: Option<String>,
    /// An optional payload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Data>,
    /// Encoding steps of `data`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<String>,
    /// Opaque metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extras: Option<serde_json::Value>,
    /// Milliseconds since the epoch when the broker accepted it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<i64>,
}

impl Annotation {
    /// `action` of a new annotation.
    pub const CREATE: u64 = 0;
    /// `action` of the removal of an earlier one (RTAN5).
    pub const DELETE: u64 = 1;

    /// The annotation as the channel's log keeps it: a [`Message`] of action
    /// [`Message::ANNOTATION`] whose `serial` is the annotated message's, whose
    /// `version.serial` is its own position, and whose `annotations` field holds the type,
    /// action and count.
    pub fn into_entry(self) -> Message {
        let mut about = serde_json::Map::new();
        if let Some(kind) = self.kind {
            about.insert("type".into(), kind.into());
        }
        about.insert("action".into(), self.action.unwrap_or(Self::CREATE).into());
        if let Some(count) = self.count {
            about.insert("count".into(), count.into());
        }
        Message {
            id: self.id,
            name: self.name,
            data: self.data,
            encoding: self.encoding,
            client_id: self.client_id,
            connection_id: self.connection_id,
            extras: self.extras,
            timestamp: self.timestamp,
            serial: self.message_serial,
            action: Some(Message::ANNOTATION),
            version: self.serial.map(|serial| MessageVersion {
                serial: Some(serial),
                ..MessageVersion::default()
            }),
            annotations: Some(serde_json::Value::Object(about)),
            ..Message::default()
        }
    }

    /// The annotation a log entry of action [`Message::ANNOTATION`] keeps (see
    /// [`Annotation::into_entry`]); `None` for any other entry.
    pub fn from_entry(entry: &Message) -> Option<Annotation> {
        if entry.action != Some(Message::ANNOTATION) {
            return None;
        }
        let about = entry.annotations.as_ref();
        let field = |key: &str| about.and_then(|a| a.get(key));
        Some(Annotation {
            id: entry.id.clone(),
            action: Some(
                field("action")
                    .and_then(|a| a.as_u64())
                    .unwrap_or(Self::CREATE),
            ),
            serial: entry.position().cloned(),
            message_serial: entry.serial.clone(),
            kind: field("type").and_then(|t| t.as_str()).map(str::to_owned),
            name: entry.name.clone(),
            count: field("count").and_then(|c| c.as_u64()),
            client_id: entry.client_id.clone(),
            connection_id: entry.connection_id.clone(),
            data: entry.data.clone(),
            encoding: entry.encoding.clone(),
            extras: entry.extras.clone(),
            timestamp: entry.timestamp,
        })
    }

    /// The size the publish limit counts: type, name, clientId, extras as JSON and data.
    pub fn size(&self) -> usize {
        self.kind.as_ref().map_or(0, String::len)
            + self.name.as_ref().map_or(0, String::len)
            + self.client_id.as_ref().map_or(0, String::len)
            + self
                .extras
                .as_ref()
                .map_or(0, |e| serde_json::to_vec(e).map_or(0, |v| v.len()))
            + self.data.as_ref().map_or(0, Data::len)
    }

    /// Brings inbound data into its canonical form (§7.5), as for messages.
    pub fn normalise_data(&mut self) -> Result<(), ErrorInfo> {
        normalise(&mut self.data, &mut self.encoding)
    }
}

/// A version of a message (TM2s, `../shared/ably-chat.md` §5.3).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageVersion {
    /// The version's own serial: its position in the channel, after every earlier version's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// When the version was made (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<i64>,
    /// Who made it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Why, in the author's words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The app's string map about the change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Value>,
}

impl Message {
    /// `action` of a new message.
    pub const CREATE: u64 = 0;
    /// `action` of an update: the fields it carries replace the message's (shallow).
    pub const UPDATE: u64 = 1;
    /// `action` of a delete: the message is marked deleted and keeps its content.
    pub const DELETE: u64 = 2;
    /// `action` of a meta message (`[meta]occupancy`).
    pub const META: u64 = 3;
    /// `action` of a summary of the message's annotations.
    pub const SUMMARY: u64 = 4;
    /// `action` of an append: its data is added to the end of the message's.
    pub const APPEND: u64 = 5;
    /// `action` of an annotation as the channel's log keeps it ([`Annotation::into_entry`]):
    /// never sent as a message, but as an [`Annotation`] in an ANNOTATION frame.
    pub const ANNOTATION: u64 = 21;

    /// Whether this is a change to an earlier message (update, delete or append), whose
    /// `serial` is that message's and whose `version.serial` is its own position.
    pub fn is_version(&self) -> bool {
        matches!(
            self.action,
            Some(Message::UPDATE | Message::DELETE | Message::APPEND)
        )
    }

    /// Whether this log entry is about an earlier message rather than a new one: a change
    /// ([`Message::is_version`]), a summary of its annotations, or an annotation. Its `serial`
    /// is the earlier message's and its `version.serial` its own position.
    pub fn refers(&self) -> bool {
        self.is_version() || matches!(self.action, Some(Message::SUMMARY | Message::ANNOTATION))
    }

    /// The serial of this entry's own position in the channel: `version.serial` for an entry
    /// about an earlier message ([`Message::refers`]), else `serial`.
    pub fn position(&self) -> Option<&String> {
        if self.refers() {
            self.version.as_ref().and_then(|v| v.serial.as_ref())
        } else {
            self.serial.as_ref()
        }
    }

    /// Gives the message its position: `serial` for a new message, `version.serial` for an
    /// entry about an earlier one (whose `serial` stays the earlier one's).
    pub fn place(&mut self, position: String) {
        if self.refers() {
            self.version.get_or_insert_with(Default::default).serial = Some(position);
        } else {
            self.serial = Some(position);
        }
    }

    /// The size the publish limit counts (§7.5): name, clientId, extras as JSON and data.
    pub fn size(&self) -> usize {
        self.name.as_ref().map_or(0, String::len)
            + self.client_id.as_ref().map_or(0, String::len)
            + self
                .extras
                .as_ref()
                .map_or(0, |e| serde_json::to_vec(e).map_or(0, |v| v.len()))
            + self.data.as_ref().map_or(0, Data::len)
    }

    /// Brings inbound data into its canonical form (§7.5): a trailing `base64` step is decoded
    /// into binary, and a JSON object or array becomes JSON text with a `json` step.
    pub fn normalise_data(&mut self) -> Result<(), ErrorInfo> {
        normalise(&mut self.data, &mut self.encoding)
    }
}

/// A presence event or member (§6.1).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PresenceMessage {
    /// Absent, present, enter, leave or update.
    pub action: PresenceAction,
    /// `<connectionId>:<msgSerial>:<index>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The member's clientId.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// The member's connectionId.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_id: Option<String>,
    /// The member's data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Data>,
    /// Encoding steps of `data`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<String>,
    /// Opaque metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extras: Option<serde_json::Value>,
    /// Milliseconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<i64>,
}

/// A payload: text, bytes, or (REST input only) a JSON object or array.
#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    /// UTF-8 text, possibly with encoding steps still applied (e.g. JSON text with `json`).
    String(String),
    /// Raw bytes: msgpack `bin`, or base64 text decoded at the broker's edge.
    Binary(Bytes),
    /// A JSON value that is not a string: normalised to text on the way in.
    Json(serde_json::Value),
}

impl Data {
    /// Byte length as the size limit counts it.
    pub fn len(&self) -> usize {
        match self {
            Data::String(s) => s.len(),
            Data::Binary(b) => b.len(),
            Data::Json(v) => serde_json::to_vec(v).map_or(0, |v| v.len()),
        }
    }

    /// True for empty text or bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Serialize for Data {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Data::String(s) => serializer.serialize_str(s),
            Data::Binary(b) => serializer.serialize_bytes(b),
            Data::Json(v) => v.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for Data {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(DataVisitor)
    }
}

struct DataVisitor;

impl<'de> Visitor<'de> for DataVisitor {
    type Value = Data;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string, binary, or JSON value")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Data, E> {
        Ok(Data::String(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Data, E> {
        Ok(Data::String(v))
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Data, E> {
        Ok(Data::Binary(Bytes::copy_from_slice(v)))
    }
    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Data, E> {
        Ok(Data::Binary(Bytes::from(v)))
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Data, E> {
        Ok(Data::Json(v.into()))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Data, E> {
        Ok(Data::Json(v.into()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Data, E> {
        Ok(Data::Json(v.into()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Data, E> {
        Ok(Data::Json(v.into()))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Data, A::Error> {
        let value = serde_json::Value::deserialize(de::value::MapAccessDeserializer::new(map))?;
        Ok(Data::Json(value))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Data, A::Error> {
        let value = serde_json::Value::deserialize(de::value::SeqAccessDeserializer::new(seq))?;
        Ok(Data::Json(value))
    }
}

/// Reads channel params as text. ably-js passes `ChannelOptions.params` through as the app
/// gave them, so `{ rewind: 1 }` arrives as a number and a flag as a boolean; each is taken as
/// its text, as Ably does, rather than failing the channel with a decode error (§5.4). A null
/// value is dropped.
fn params_as_text<'de, D>(deserializer: D) -> Result<Option<BTreeMap<String, String>>, D::Error>
where
    D: Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Param {
        Text(String),
        Flag(bool),
        Whole(i64),
        Natural(u64),
        Real(f64),
        Null(()),
    }
    let raw: Option<BTreeMap<String, Param>> = Option::deserialize(deserializer)?;
    Ok(raw.map(|params| {
        params
            .into_iter()
            .filter_map(|(name, value)| {
                let text = match value {
                    Param::Text(text) => text,
                    Param::Flag(flag) => flag.to_string(),
                    Param::Whole(n) => n.to_string(),
                    Param::Natural(n) => n.to_string(),
                    Param::Real(x) => x.to_string(),
                    Param::Null(()) => return None,
                };
                Some((name, text))
            })
            .collect()
    }))
}

fn normalise(data: &mut Option<Data>, encoding: &mut Option<String>) -> Result<(), ErrorInfo> {
    if encoding.as_deref() == Some("") {
        *encoding = None;
    }
    match data.take() {
        None => {}
        Some(Data::String(text)) => {
            let steps = encoding.as_deref().unwrap_or("");
            if let Some(rest) = steps
                .strip_suffix("base64")
                .filter(|r| r.is_empty() || r.ends_with('/'))
            {
                let bytes = BASE64
                    .decode(text.trim())
                    .map_err(|_| ErrorInfo::new(codes::INVALID_DATA, "data is not valid base64"))?;
                let rest = rest.trim_end_matches('/');
                *encoding = (!rest.is_empty()).then(|| rest.to_owned());
                *data = Some(Data::Binary(Bytes::from(bytes)));
            } else {
                *data = Some(Data::String(text));
            }
        }
        Some(Data::Binary(b)) => *data = Some(Data::Binary(b)),
        Some(Data::Json(value)) => {
            if !(value.is_object() || value.is_array()) {
                return Err(ErrorInfo::new(
                    codes::INVALID_DATA,
                    "data must be a string, binary, or a JSON object or array",
                ));
            }
            *data = Some(Data::String(value.to_string()));
            *encoding = Some(match encoding.take() {
                Some(steps) => format!("{steps}/json"),
                None => "json".to_owned(),
            });
        }
    }
    Ok(())
}

/// Turns binary `data` into base64 text with a trailing `base64` step, for JSON readers
/// (§7.5); anything else stays as it is.
pub fn base64_binary(data: &mut Option<Data>, encoding: &mut Option<String>) {
    if let Some(Data::Binary(bytes)) = data {
        *data = Some(Data::String(BASE64.encode(bytes)));
        *encoding = Some(match encoding.take() {
            Some(steps) => format!("{steps}/base64"),
            None => "base64".to_owned(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_take_numbers_and_booleans_as_text_in_both_formats() {
        let json =
            r#"{"action":10,"channel":"c","params":{"rewind":1,"echo":false,"s":"x","n":null}}"#;
        let decoded: ProtocolMessage = serde_json::from_str(json).unwrap();
        let params = decoded.params.unwrap();
        assert_eq!(params["rewind"], "1");
        assert_eq!(params["echo"], "false");
        assert_eq!(params["s"], "x");
        assert!(!params.contains_key("n"));
        let value = serde_json::json!({"action": 10, "channel": "c", "params": {"rewind": 1, "delta": 2.5}});
        let packed = rmp_serde::to_vec_named(&value).unwrap();
        let decoded: ProtocolMessage = rmp_serde::from_slice(&packed).unwrap();
        let params = decoded.params.unwrap();
        assert_eq!(params["rewind"], "1");
        assert_eq!(params["delta"], "2.5");
    }

    #[test]
    fn base64_from_a_json_client_becomes_binary_and_back() {
        let mut m = Message {
            data: Some(Data::String("AAEC/w==".into())),
            encoding: Some("base64".into()),
            ..Default::default()
        };
        m.normalise_data().unwrap();
        assert_eq!(
            m.data,
            Some(Data::Binary(Bytes::from_static(&[0, 1, 2, 255])))
        );
        assert_eq!(m.encoding, None);

        let pm = ProtocolMessage {
            messages: Some(vec![m]),
            ..ProtocolMessage::new(Action::Message)
        };
        let json = pm.for_json();
        let out = &json.messages.as_ref().unwrap()[0];
        assert_eq!(out.data, Some(Data::String("AAEC/w==".into())));
        assert_eq!(out.encoding.as_deref(), Some("base64"));
    }

    #[test]
    fn cipher_steps_before_base64_are_kept() {
        let mut m = Message {
            data: Some(Data::String("AAE=".into())),
            encoding: Some("utf-8/cipher+aes-128-cbc/base64".into()),
            ..Default::default()
        };
        m.normalise_data().unwrap();
        assert_eq!(m.encoding.as_deref(), Some("utf-8/cipher+aes-128-cbc"));
        assert!(matches!(m.data, Some(Data::Binary(_))));
    }

    #[test]
    fn json_objects_become_text_with_a_json_step() {
        let mut m: Message = serde_json::from_str(r#"{"data":{"a":[1,2]}}"#).unwrap();
        m.normalise_data().unwrap();
        assert_eq!(m.data, Some(Data::String(r#"{"a":[1,2]}"#.into())));
        assert_eq!(m.encoding.as_deref(), Some("json"));
    }

    #[test]
    fn numbers_and_bad_base64_are_refused_with_40013() {
        let mut m: Message = serde_json::from_str(r#"{"data":12}"#).unwrap();
        assert_eq!(m.normalise_data().unwrap_err().code, 40013);
        let mut m: Message = serde_json::from_str(r#"{"data":"!!","encoding":"base64"}"#).unwrap();
        assert_eq!(m.normalise_data().unwrap_err().code, 40013);
    }

    #[test]
    fn size_counts_name_client_id_extras_and_data() {
        let m = Message {
            name: Some("ab".into()),
            client_id: Some("c".into()),
            extras: Some(serde_json::json!({"x":1})),
            data: Some(Data::Binary(Bytes::from_static(&[1, 2, 3]))),
            ..Default::default()
        };
        assert_eq!(m.size(), 2 + 1 + 7 + 3);
    }
}
