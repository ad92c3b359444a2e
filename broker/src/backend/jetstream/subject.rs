//! Where a channel lives in JetStream: its shard (one of the cluster's streams, chosen by a
//! CRC-32 of the name, so every node and every build agrees) and its subject,
//! `<prefix>.ch.<shard>.<token>`. Ably channel names may hold `.`, `*`, `>`, spaces and any
//! Unicode, none of which a NATS subject token may; the token keeps letters, digits, `-` and
//! `_` and writes every other byte as `%XX`, so it stays readable in `nats` tools and decodes
//! back to the name exactly (`../shared/cluster.md` §3.1).

use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// Bytes written as `%XX` in a subject token: all but letters, digits, `-` and `_`.
const ESCAPED: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_');

/// The shard of `channel` among `shards`.
pub fn shard_of(channel: &str, shards: u32) -> u32 {
    crc32fast::hash(channel.as_bytes()) % shards.max(1)
}

/// The name of shard `shard`'s stream.
pub fn stream_name(prefix: &str, shard: u32) -> String {
    format!("{}_CH_{shard}", prefix.to_ascii_uppercase())
}

/// The subjects of shard `shard`'s stream, as a wildcard.
pub fn stream_subjects(prefix: &str, shard: u32) -> String {
    format!("{prefix}.ch.{shard}.>")
}

/// The subject `channel` is published to.
pub fn subject(prefix: &str, shard: u32, channel: &str) -> String {
    format!("{prefix}.ch.{shard}.{}", token(channel))
}

/// `channel` as one subject token.
pub fn token(channel: &str) -> String {
    utf8_percent_encode(channel, ESCAPED).to_string()
}

/// The channel a subject of the cluster's streams names, if it is one.
pub fn channel_of(subject: &str) -> Option<String> {
    let token = subject.splitn(4, '.').nth(3)?;
    percent_decode_str(token)
        .decode_utf8()
        .ok()
        .map(|name| name.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_channel_name_is_one_token_and_decodes_back() {
        for name in [
            "room-1",
            "a.b.c",
            "* > x",
            "chat:général",
            "100%",
            "[meta]log",
            "",
        ] {
            let subject = subject("ably", shard_of(name, 8), name);
            let token = subject.splitn(4, '.').nth(3).unwrap();
            assert!(
                token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_%".contains(&b)),
                "{token}"
            );
            assert_eq!(channel_of(&subject).as_deref(), Some(name));
        }
    }

    #[test]
    fn shards_are_stable_and_in_range() {
        // CRC-32 of the name: the same on every node and every build.
        assert_eq!(shard_of("room-1", 8), crc32fast::hash(b"room-1") % 8);
        assert!((0..1000).all(|i| shard_of(&format!("c{i}"), 8) < 8));
        assert_eq!(stream_name("ably", 3), "ABLY_CH_3");
        assert_eq!(stream_subjects("ably", 3), "ably.ch.3.>");
    }
}
