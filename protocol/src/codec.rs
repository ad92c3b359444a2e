//! The two wire formats (§2): JSON in WebSocket text frames and msgpack (maps with named fields)
//! in binary frames. Decoding never panics; a frame that does not decode is a [`DecodeError`]
//! the broker answers with an Ably error.

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::message::ProtocolMessage;

/// A wire format, chosen per connection by the `format` query parameter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Format {
    /// JSON text (`format=json`); binary data travels base64'd.
    #[default]
    Json,
    /// msgpack (`format=msgpack`); binary data travels as `bin`.
    Msgpack,
}

impl Format {
    /// The format named by a `format` query value or an HTTP media type.
    pub fn parse(value: &str) -> Option<Format> {
        match value {
            "json" | "application/json" => Some(Format::Json),
            "msgpack" | "application/x-msgpack" => Some(Format::Msgpack),
            _ => None,
        }
    }

    /// The HTTP media type of the format, without parameters (§9.1).
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Msgpack => "application/x-msgpack",
        }
    }
}

/// Why a frame or body did not decode.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Malformed JSON or wrong field types.
    #[error("invalid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// Malformed msgpack or wrong field types.
    #[error("invalid msgpack: {0}")]
    Msgpack(#[from] rmp_serde::decode::Error),
}

/// Decodes one ProtocolMessage.
pub fn decode(format: Format, bytes: &[u8]) -> Result<ProtocolMessage, DecodeError> {
    decode_value(format, bytes)
}

/// Decodes any wire value (REST bodies use this for message arrays).
pub fn decode_value<T: DeserializeOwned>(format: Format, bytes: &[u8]) -> Result<T, DecodeError> {
    Ok(match format {
        Format::Json => serde_json::from_slice(bytes)?,
        Format::Msgpack => rmp_serde::from_slice(bytes)?,
    })
}

/// Encodes one ProtocolMessage for a client of `format`, base64-ing binary data for JSON.
pub fn encode(format: Format, message: &ProtocolMessage) -> Bytes {
    match format {
        Format::Json => encode_value(format, &*message.for_json()),
        Format::Msgpack => encode_value(format, message),
    }
}

/// Encodes any wire value. The caller has already made binary data JSON-safe where needed.
pub fn encode_value<T: Serialize + ?Sized>(format: Format, value: &T) -> Bytes {
    // Serializing our own plain data types cannot fail: no maps with non-string keys and no
    // custom serializers that error.
    let bytes = match format {
        Format::Json => serde_json::to_vec(value).expect("wire types serialize to JSON"),
        Format::Msgpack => rmp_serde::to_vec_named(value).expect("wire types serialize to msgpack"),
    };
    Bytes::from(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::action::Action;
    use crate::message::{Data, Message};

    fn sample() -> ProtocolMessage {
        ProtocolMessage {
            channel: Some("chat:room1".into()),
            msg_serial: Some(7),
            timestamp: Some(1_760_000_000_000),
            messages: Some(vec![Message {
                name: Some("greet".into()),
                data: Some(Data::Binary(Bytes::from_static(&[0, 159, 146, 150]))),
                ..Default::default()
            }]),
            ..ProtocolMessage::new(Action::Message)
        }
    }

    #[test]
    fn msgpack_round_trips_binary_as_bin() {
        let pm = sample();
        let bytes = encode(Format::Msgpack, &pm);
        assert_eq!(decode(Format::Msgpack, &bytes).unwrap(), pm);
    }

    #[test]
    fn json_carries_binary_as_base64() {
        let bytes = encode(Format::Json, &sample());
        let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(value["messages"][0]["data"], "AJ+Slg==");
        assert_eq!(value["messages"][0]["encoding"], "base64");
        assert_eq!(value["action"], 15);
    }

    #[test]
    fn nulls_unknown_fields_and_unknown_actions_decode() {
        let pm = decode(
            Format::Json,
            br#"{"action":99,"channel":null,"size":3,"messages":[{"data":null,"size":1,"action":0}]}"#,
        )
        .unwrap();
        assert_eq!(pm.action, Action::Unknown(99));
        assert_eq!(pm.channel, None);
        assert_eq!(pm.messages.unwrap()[0].data, None);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(decode(Format::Json, b"{\"action\":\"x\"}").is_err());
        assert!(decode(Format::Json, b"not json").is_err());
        assert!(decode(Format::Msgpack, &[0xc1, 0xff, 0x00]).is_err());
        assert!(decode(Format::Msgpack, &[0x81, 0xa6]).is_err());
    }
}

/// What can still be read from a frame that did not decode as a ProtocolMessage, so the broker
/// can refuse it precisely (NACK a publish, fail one channel) instead of dropping the
/// connection.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Salvage {
    /// The action number, when it was a number.
    pub action: Option<u64>,
    /// The msgSerial, when it was a number.
    pub msg_serial: Option<u64>,
    /// The channel, when it was a string.
    pub channel: Option<String>,
}

/// Reads `action`, `msgSerial` and `channel` from a frame whatever its other fields hold.
/// Returns `None` when the frame is not a map at all.
pub fn salvage(format: Format, bytes: &[u8]) -> Option<Salvage> {
    let loose: Loose = decode_value(format, bytes).ok()?;
    Some(Salvage {
        action: loose.action.0.and_then(|v| v.into_u64()),
        msg_serial: loose.msg_serial.0.and_then(|v| v.into_u64()),
        channel: loose.channel.0.and_then(|v| v.into_string()),
    })
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Loose {
    #[serde(default)]
    action: Lenient,
    #[serde(default)]
    msg_serial: Lenient,
    #[serde(default)]
    channel: Lenient,
}

/// A field read leniently: numbers and strings are kept, anything else is skipped.
#[derive(Default)]
struct Lenient(Option<Scalar>);

enum Scalar {
    Number(u64),
    Text(String),
}

impl Scalar {
    fn into_u64(self) -> Option<u64> {
        match self {
            Scalar::Number(n) => Some(n),
            Scalar::Text(_) => None,
        }
    }
    fn into_string(self) -> Option<String> {
        match self {
            Scalar::Text(s) => Some(s),
            Scalar::Number(_) => None,
        }
    }
}

impl<'de> serde::Deserialize<'de> for Lenient {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Lenient;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("anything")
            }
            fn visit_u64<E>(self, v: u64) -> Result<Lenient, E> {
                Ok(Lenient(Some(Scalar::Number(v))))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Lenient, E> {
                Ok(Lenient(u64::try_from(v).ok().map(Scalar::Number)))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Lenient, E> {
                Ok(Lenient(None))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Lenient, E> {
                Ok(Lenient(None))
            }
            fn visit_str<E>(self, v: &str) -> Result<Lenient, E> {
                Ok(Lenient(Some(Scalar::Text(v.to_owned()))))
            }
            fn visit_bytes<E>(self, _: &[u8]) -> Result<Lenient, E> {
                Ok(Lenient(None))
            }
            fn visit_unit<E>(self) -> Result<Lenient, E> {
                Ok(Lenient(None))
            }
            fn visit_none<E>(self) -> Result<Lenient, E> {
                Ok(Lenient(None))
            }
            fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Lenient, D::Error> {
                <Lenient as serde::Deserialize>::deserialize(d)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Lenient, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Lenient(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Lenient, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Lenient(None))
            }
        }
        deserializer.deserialize_any(V)
    }
}

#[cfg(test)]
mod salvage_tests {
    use super::*;

    #[test]
    fn a_publish_with_wrong_field_types_still_yields_its_msg_serial() {
        let bytes = br#"{"action":15,"msgSerial":3,"channel":"x","messages":"oops"}"#;
        assert!(decode(Format::Json, bytes).is_err());
        let s = salvage(Format::Json, bytes).unwrap();
        assert_eq!((s.action, s.msg_serial), (Some(15), Some(3)));
        assert_eq!(s.channel.as_deref(), Some("x"));
        let packed =
            rmp_serde::to_vec_named(&serde_json::json!({"action":10,"channel":["a"],"flags":"x"}))
                .unwrap();
        let s = salvage(Format::Msgpack, &packed).unwrap();
        assert_eq!((s.action, s.channel), (Some(10), None));
        assert_eq!(salvage(Format::Json, b"\"text\""), None);
    }
}
