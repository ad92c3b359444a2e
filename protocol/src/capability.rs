//! Capabilities (§8.7): which operations a credential may perform on which channels, with
//! Ably's resource wildcards, and the channel modes they grant (§8.8). A token's effective
//! capability is its own intersected with its key's; [`Capability::intersect`] keeps both and
//! asks each, which is exact for any pair of wildcard patterns.

use std::collections::BTreeMap;

use crate::error::{codes, ErrorInfo};
use crate::flags;

/// One capability operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operation {
    /// Receive messages, presence events and the presence set.
    Subscribe,
    /// Publish messages.
    Publish,
    /// Enter presence.
    Presence,
    /// Read history.
    History,
    /// Read stats.
    Stats,
    /// Read channel metadata (status, occupancy).
    ChannelMetadata,
    /// Any operation this broker does not act on (push, objects, annotations…), kept so
    /// capability strings round-trip.
    Other,
}

impl Operation {
    fn bit(self) -> u32 {
        match self {
            Operation::Subscribe => 1,
            Operation::Publish => 1 << 1,
            Operation::Presence => 1 << 2,
            Operation::History => 1 << 3,
            Operation::Stats => 1 << 4,
            Operation::ChannelMetadata => 1 << 5,
            Operation::Other => 1 << 6,
        }
    }

    fn parse(name: &str) -> Option<u32> {
        Some(match name {
            "*" => u32::MAX,
            "subscribe" => Operation::Subscribe.bit(),
            "publish" => Operation::Publish.bit(),
            "presence" => Operation::Presence.bit(),
            "history" => Operation::History.bit(),
            "stats" => Operation::Stats.bit(),
            "channel-metadata" => Operation::ChannelMetadata.bit(),
            "push-subscribe"
            | "push-admin"
            | "privileged-headers"
            | "object-subscribe"
            | "object-publish"
            | "annotation-subscribe"
            | "annotation-publish"
            | "message-update-own"
            | "message-update-any"
            | "message-delete-own"
            | "message-delete-any" => Operation::Other.bit(),
            _ => return None,
        })
    }
}

/// A set of operations, as granted on one channel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Operations(u32);

impl Operations {
    /// True when `op` is in the set.
    pub fn contains(self, op: Operation) -> bool {
        self.0 & op.bit() != 0
    }

    /// True when no operation is granted.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The channel modes these operations grant (§8.8).
    pub fn modes(self) -> u64 {
        let mut modes = 0;
        if self.contains(Operation::Subscribe) {
            modes |= flags::MODE_SUBSCRIBE | flags::MODE_PRESENCE_SUBSCRIBE;
        }
        if self.contains(Operation::Publish) {
            modes |= flags::MODE_PUBLISH;
        }
        if self.contains(Operation::Presence) {
            modes |= flags::MODE_PRESENCE;
        }
        modes
    }
}

/// A parsed capability: resource patterns with their operations, possibly intersected with
/// further capabilities that must all agree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capability {
    grants: Vec<(String, u32)>,
    also: Vec<Capability>,
    source: String,
}

impl Capability {
    /// Everything on every channel: `{"*":["*"]}`... and also the `[`-qualified ones.
    pub fn all() -> Capability {
        Capability::parse(r#"{"[*]*":["*"]}"#).expect("literal capability parses")
    }

    /// Parses the JSON text form, e.g. `{"chat:*":["publish","subscribe"]}`.
    pub fn parse(text: &str) -> Result<Capability, ErrorInfo> {
        let value: serde_json::Value = serde_json::from_str(text).map_err(|_| invalid())?;
        Capability::from_value(&value)
    }

    /// Parses the object form.
    pub fn from_value(value: &serde_json::Value) -> Result<Capability, ErrorInfo> {
        let object = value.as_object().ok_or_else(invalid)?;
        let mut grants = Vec::with_capacity(object.len());
        let mut canonical: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (resource, ops) in object {
            let ops = ops.as_array().ok_or_else(invalid)?;
            if resource.is_empty() || ops.is_empty() {
                return Err(invalid());
            }
            let mut bits = 0;
            let mut names = Vec::with_capacity(ops.len());
            for op in ops {
                let name = op.as_str().ok_or_else(invalid)?;
                bits |= Operation::parse(name).ok_or_else(|| {
                    ErrorInfo::new(
                        codes::INVALID_PARAMETER,
                        format!("unknown capability operation \"{name}\""),
                    )
                })?;
                names.push(name);
            }
            names.sort_unstable();
            canonical.insert(resource, names);
            grants.push((resource.clone(), bits));
        }
        let source = serde_json::to_string(&canonical).expect("map of strings serializes");
        Ok(Capability {
            grants,
            also: Vec::new(),
            source,
        })
    }

    /// This capability further limited by `other`: an operation is allowed only where both
    /// allow it.
    pub fn intersect(mut self, other: Capability) -> Capability {
        self.also.push(other);
        self
    }

    /// The operations granted on `channel`.
    pub fn operations(&self, channel: &str) -> Operations {
        let mut bits = self
            .grants
            .iter()
            .filter(|(pattern, _)| resource_matches(pattern, channel))
            .fold(0, |acc, (_, ops)| acc | ops);
        for other in &self.also {
            bits &= other.operations(channel).0;
        }
        Operations(bits)
    }

    /// True when `op` is allowed on `channel`.
    pub fn allows(&self, channel: &str, op: Operation) -> bool {
        self.operations(channel).contains(op)
    }

    /// The canonical JSON text of this capability's own grants (keys and operations sorted),
    /// as TokenDetails carries it.
    pub fn as_json(&self) -> &str {
        &self.source
    }
}

fn invalid() -> ErrorInfo {
    ErrorInfo::new(
        codes::INVALID_PARAMETER,
        "capability must be a JSON object of resource to a non-empty list of operations",
    )
}

/// Ably's resource matching (§8.7): `:`-separated segments; `*` stands for one segment, a
/// trailing `*` for one or more; a lone `*` matches every channel not starting with `[`;
/// `[*]*` matches everything.
pub fn resource_matches(pattern: &str, channel: &str) -> bool {
    if pattern == "[*]*" {
        return true;
    }
    if pattern == "*" {
        return !channel.starts_with('[');
    }
    let pattern: Vec<&str> = pattern.split(':').collect();
    let mut segments = channel.split(':');
    for (i, want) in pattern.iter().enumerate() {
        let last = i + 1 == pattern.len();
        match segments.next() {
            None => return false,
            Some(_) if *want == "*" && last => return true,
            Some(_) if *want == "*" => {}
            Some(got) if got == *want => {}
            Some(_) => return false,
        }
    }
    segments.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_follow_section_8_7() {
        assert!(resource_matches("foo:*:baz", "foo:bar:baz"));
        assert!(!resource_matches("foo:*:baz", "foo:bar:bam:baz"));
        assert!(resource_matches("foo:*", "foo:bar"));
        assert!(resource_matches("foo:*", "foo:bar:bam"));
        assert!(!resource_matches("foo:*", "foo"));
        assert!(resource_matches("foo*", "foo*"));
        assert!(!resource_matches("foo*", "foobar"));
        assert!(resource_matches("*", "anything:at:all"));
        assert!(!resource_matches("*", "[meta]log"));
        assert!(resource_matches("[*]*", "[meta]log"));
        assert!(resource_matches("chat", "chat"));
        assert!(!resource_matches("chat", "chat:1"));
    }

    #[test]
    fn operations_union_over_matching_patterns_and_map_to_modes() {
        let cap = Capability::parse(r#"{"chat:*":["publish"],"*":["subscribe"]}"#).unwrap();
        let ops = cap.operations("chat:1");
        assert!(ops.contains(Operation::Publish) && ops.contains(Operation::Subscribe));
        assert_eq!(ops.modes(), 0x20000 | 0x40000 | 0x80000);
        assert!(!cap.allows("news", Operation::Publish));
        assert!(Capability::all().allows("[meta]x", Operation::History));
    }

    #[test]
    fn intersection_needs_both_sides() {
        let key = Capability::parse(r#"{"chat:*":["*"]}"#).unwrap();
        let token = Capability::parse(r#"{"*":["subscribe","publish"]}"#).unwrap();
        let effective = token.intersect(key);
        assert!(effective.allows("chat:a", Operation::Publish));
        assert!(!effective.allows("chat:a", Operation::History));
        assert!(!effective.allows("news", Operation::Subscribe));
    }

    #[test]
    fn malformed_capabilities_are_errors() {
        for text in [
            r#"[]"#,
            r#"{"a":"publish"}"#,
            r#"{"a":[]}"#,
            r#"{"a":["fly"]}"#,
            "{",
        ] {
            assert!(Capability::parse(text).is_err(), "{text}");
        }
        let cap = Capability::parse(r#"{"b":["subscribe","publish"],"a":["*"]}"#).unwrap();
        assert_eq!(cap.as_json(), r#"{"a":["*"],"b":["publish","subscribe"]}"#);
    }
}
