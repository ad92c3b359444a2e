//! Payloads: what the app publishes ([`Payload`]) and how received data is decoded from its
//! `encoding` (§7.5 of `../shared/ably-protocol.md`): `base64` to bytes, `json` to a value,
//! `utf-8` to text, right to left; anything else (cipher steps) is left as it is.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::Bytes;
use protocol::{Data, Message, PresenceMessage};

/// Data to publish or enter presence with.
#[derive(Clone, Debug, PartialEq)]
pub enum Payload {
    /// No data.
    None,
    /// Text.
    Text(String),
    /// Bytes: `bin` over msgpack, base64 over JSON.
    Binary(Bytes),
    /// A JSON object or array, sent as JSON text with the `json` encoding.
    Json(serde_json::Value),
}

impl Payload {
    /// The wire form: data and encoding.
    pub fn into_wire(self) -> (Option<Data>, Option<String>) {
        match self {
            Payload::None => (None, None),
            Payload::Text(s) => (Some(Data::String(s)), None),
            Payload::Binary(b) => (Some(Data::Binary(b)), None),
            Payload::Json(v) => (Some(Data::String(v.to_string())), Some("json".to_owned())),
        }
    }
}

impl From<Data> for Payload {
    /// Received data, to publish again as it came (decoded JSON stays JSON).
    fn from(data: Data) -> Self {
        match data {
            Data::String(s) => Payload::Text(s),
            Data::Binary(b) => Payload::Binary(b),
            Data::Json(v) => Payload::Json(v),
        }
    }
}

impl From<Option<Data>> for Payload {
    fn from(data: Option<Data>) -> Self {
        data.map_or(Payload::None, Payload::from)
    }
}

impl From<&str> for Payload {
    fn from(s: &str) -> Self {
        Payload::Text(s.to_owned())
    }
}
impl From<String> for Payload {
    fn from(s: String) -> Self {
        Payload::Text(s)
    }
}
impl From<Vec<u8>> for Payload {
    fn from(b: Vec<u8>) -> Self {
        Payload::Binary(Bytes::from(b))
    }
}
impl From<Bytes> for Payload {
    fn from(b: Bytes) -> Self {
        Payload::Binary(b)
    }
}
impl From<&[u8]> for Payload {
    fn from(b: &[u8]) -> Self {
        Payload::Binary(Bytes::copy_from_slice(b))
    }
}
impl From<serde_json::Value> for Payload {
    fn from(v: serde_json::Value) -> Self {
        Payload::Json(v)
    }
}
impl From<()> for Payload {
    fn from(_: ()) -> Self {
        Payload::None
    }
}

/// Decodes `data` by its `encoding`, leaving unknown steps in place.
pub fn decode(data: &mut Option<Data>, encoding: &mut Option<String>) {
    while let Some(steps) = encoding.clone() {
        let (rest, last) = match steps.rsplit_once('/') {
            Some((rest, last)) => (Some(rest.to_owned()), last.to_owned()),
            None => (None, steps.clone()),
        };
        let decoded = match (last.as_str(), data.take()) {
            ("base64", Some(Data::String(s))) => STANDARD
                .decode(s.trim())
                .ok()
                .map(|b| Data::Binary(Bytes::from(b))),
            ("json", Some(Data::String(s))) => serde_json::from_str(&s).ok().map(Data::Json),
            ("json", Some(Data::Binary(b))) => serde_json::from_slice(&b).ok().map(Data::Json),
            ("utf-8", Some(Data::Binary(b))) => {
                String::from_utf8(b.to_vec()).ok().map(Data::String)
            }
            (_, original) => {
                *data = original;
                return;
            }
        };
        match decoded {
            Some(d) => {
                *data = Some(d);
                *encoding = rest;
            }
            None => return,
        }
    }
}

/// Decodes a message's data in place.
pub fn decode_message(m: &mut Message) {
    decode(&mut m.data, &mut m.encoding);
}

/// Decodes a presence item's data in place.
pub fn decode_presence(m: &mut PresenceMessage) {
    decode(&mut m.data, &mut m.encoding);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_and_base64_decode_right_to_left() {
        let mut data = Some(Data::String("eyJhIjoxfQ==".into()));
        let mut encoding = Some("json/base64".into());
        decode(&mut data, &mut encoding);
        assert_eq!(data, Some(Data::Json(serde_json::json!({"a": 1}))));
        assert_eq!(encoding, None);
        let mut data = Some(Data::String("AAE=".into()));
        let mut encoding = Some("cipher+aes/base64".into());
        decode(&mut data, &mut encoding);
        assert_eq!(data, Some(Data::Binary(Bytes::from_static(&[0, 1]))));
        assert_eq!(encoding.as_deref(), Some("cipher+aes"));
    }
}
