//! Capabilities (§8.7): which operations a credential may perform on which channels, with
//! Ably's resource wildcards, and the channel modes they grant (§8.8). An @ably/chat room's
//! channel `X::$chat` is also covered by whatever covers the room name `X`
//! (`../shared/ably-chat.md` §5.1), so capabilities can be written per room. A token's effective
//! capability is its own intersected with its key's: [`Capability::intersect`] keeps both and
//! asks each, which is exact for any pair of wildcard patterns, and
//! [`Capability::intersection`] writes the intersection out as the text a token carries.

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
    /// Update (edit) one's own messages.
    MessageUpdateOwn,
    /// Update anyone's messages.
    MessageUpdateAny,
    /// Delete one's own messages.
    MessageDeleteOwn,
    /// Delete anyone's messages.
    MessageDeleteAny,
    /// Publish annotations (message reactions); grants the ANNOTATION_PUBLISH mode.
    AnnotationPublish,
    /// Receive individual annotations; grants the ANNOTATION_SUBSCRIBE mode.
    AnnotationSubscribe,
    /// Any operation this broker does not act on (push, objects, privileged headers), kept
    /// so capability strings round-trip.
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
            Operation::MessageUpdateOwn => 1 << 7,
            Operation::MessageUpdateAny => 1 << 8,
            Operation::MessageDeleteOwn => 1 << 9,
            Operation::MessageDeleteAny => 1 << 10,
            Operation::AnnotationPublish => 1 << 11,
            Operation::AnnotationSubscribe => 1 << 12,
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
            "message-update-own" => Operation::MessageUpdateOwn.bit(),
            "message-update-any" => Operation::MessageUpdateAny.bit(),
            "message-delete-own" => Operation::MessageDeleteOwn.bit(),
            "message-delete-any" => Operation::MessageDeleteAny.bit(),
            "annotation-publish" => Operation::AnnotationPublish.bit(),
            "annotation-subscribe" => Operation::AnnotationSubscribe.bit(),
            "push-subscribe" | "push-admin" | "privileged-headers" | "object-subscribe"
            | "object-publish" => Operation::Other.bit(),
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

    /// The channel modes these operations grant (§8.8): `subscribe` the SUBSCRIBE and
    /// PRESENCE_SUBSCRIBE modes, `publish` PUBLISH, `presence` PRESENCE, `annotation-publish`
    /// ANNOTATION_PUBLISH and `annotation-subscribe` ANNOTATION_SUBSCRIBE (ably-chat.md §4).
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
        if self.contains(Operation::AnnotationPublish) {
            modes |= flags::MODE_ANNOTATION_PUBLISH;
        }
        if self.contains(Operation::AnnotationSubscribe) {
            modes |= flags::MODE_ANNOTATION_SUBSCRIBE;
        }
        modes
    }

    /// The modes of an ATTACH that requests none (§8.8): every one [`Operations::modes`]
    /// permits but ANNOTATION_SUBSCRIBE, which a client must ask for, as with Ably
    /// (individual annotations reach only clients that requested the mode; error 93001).
    pub fn default_modes(self) -> u64 {
        self.modes() & !flags::MODE_ANNOTATION_SUBSCRIBE
    }
}

/// One resource pattern of a capability with its operations, as written.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    pattern: String,
    /// The operation names in the order given; `["*"]` when `*` was among them.
    names: Vec<String>,
    bits: u32,
}

impl Entry {
    /// An entry for `pattern` with no operations yet, room for `names` of them.
    fn empty(pattern: String, names: usize) -> Entry {
        Entry {
            pattern,
            names: Vec::with_capacity(names),
            bits: 0,
        }
    }

    /// Adds the operation `name`, once; an unknown name is 40003.
    fn grant(&mut self, name: &str) -> Result<(), ErrorInfo> {
        self.bits |= Operation::parse(name).ok_or_else(|| {
            ErrorInfo::new(
                codes::INVALID_PARAMETER,
                format!("unknown capability operation \"{name}\""),
            )
        })?;
        if !self.names.iter().any(|n| n == name) {
            self.names.push(name.to_owned());
        }
        Ok(())
    }

    /// The entry as kept: a list naming `*` is just `["*"]`.
    fn finished(mut self) -> Entry {
        if self.all_operations() {
            self.names = vec!["*".to_owned()];
        }
        self
    }

    fn all_operations(&self) -> bool {
        self.names.iter().any(|n| n == "*")
    }

    /// The operations both entries grant, by name: each side's `*` stands for the other's
    /// list, so the result names what was asked for, in the order it was asked for.
    fn common_operations(&self, other: &Entry) -> Vec<String> {
        match (self.all_operations(), other.all_operations()) {
            (true, true) => vec!["*".to_owned()],
            (true, false) => other.names.clone(),
            (false, true) => self.names.clone(),
            (false, false) => self
                .names
                .iter()
                .filter(|n| other.names.contains(n))
                .cloned()
                .collect(),
        }
    }
}

/// A parsed capability: resource patterns with their operations, possibly intersected with
/// further capabilities that must all agree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capability {
    entries: Vec<Entry>,
    also: Vec<Capability>,
    source: String,
}

impl Capability {
    /// Everything on every channel: `{"*":["*"]}`... and also the `[`-qualified ones.
    pub fn all() -> Capability {
        Capability::parse(r#"{"[*]*":["*"]}"#).expect("literal capability parses")
    }

    /// Parses the JSON text form, e.g. `{"chat:*":["publish","subscribe"]}`, keeping the
    /// resources and operations in the order written.
    pub fn parse(text: &str) -> Result<Capability, ErrorInfo> {
        let ordered: Ordered = serde_json::from_str(text).map_err(|_| invalid())?;
        Capability::from_pairs(ordered.0)
    }

    /// Parses the object form (whose keys serde_json has already sorted).
    pub fn from_value(value: &serde_json::Value) -> Result<Capability, ErrorInfo> {
        let object = value.as_object().ok_or_else(invalid)?;
        Capability::from_pairs(
            object
                .iter()
                .map(|(resource, ops)| (resource.clone(), ops.clone()))
                .collect(),
        )
    }

    fn from_pairs(pairs: Vec<(String, serde_json::Value)>) -> Result<Capability, ErrorInfo> {
        let mut entries: Vec<Entry> = Vec::with_capacity(pairs.len());
        for (resource, ops) in pairs {
            let ops = ops.as_array().ok_or_else(invalid)?;
            if resource.is_empty() || ops.is_empty() {
                return Err(invalid());
            }
            let mut entry = Entry::empty(resource, ops.len());
            for op in ops {
                entry.grant(op.as_str().ok_or_else(invalid)?)?;
            }
            entries.push(entry.finished());
        }
        Ok(Capability::from_entries(merge_duplicates(entries)))
    }

    /// Builds a capability from resource patterns with their operation names, in the order
    /// given, e.g. `[("chat:*", ["publish", "subscribe"])]`: the capability [`Capability::parse`]
    /// makes of the same object written as JSON, without the text in between, and with the same
    /// errors (40003) for an empty pattern, an empty list or an unknown operation.
    pub fn from_resources<R, O, N>(
        resources: impl IntoIterator<Item = (R, O)>,
    ) -> Result<Capability, ErrorInfo>
    where
        R: Into<String>,
        O: IntoIterator<Item = N>,
        N: AsRef<str>,
    {
        let mut entries: Vec<Entry> = Vec::new();
        for (resource, ops) in resources {
            let resource = resource.into();
            let ops: Vec<N> = ops.into_iter().collect();
            if resource.is_empty() || ops.is_empty() {
                return Err(invalid());
            }
            let mut entry = Entry::empty(resource, ops.len());
            for op in &ops {
                entry.grant(op.as_ref())?;
            }
            entries.push(entry.finished());
        }
        Ok(Capability::from_entries(merge_duplicates(entries)))
    }

    fn from_entries(entries: Vec<Entry>) -> Capability {
        let mut source = String::from("{");
        for (i, entry) in entries.iter().enumerate() {
            if i > 0 {
                source.push(',');
            }
            source.push_str(&serde_json::to_string(&entry.pattern).expect("string serializes"));
            source.push(':');
            source.push_str(&serde_json::to_string(&entry.names).expect("strings serialize"));
        }
        source.push('}');
        Capability {
            entries,
            also: Vec::new(),
            source,
        }
    }

    /// This capability further limited by `other`: an operation is allowed only where both
    /// allow it. Lazy and exact; [`Capability::intersection`] writes the result out.
    pub fn intersect(mut self, other: Capability) -> Capability {
        self.also.push(other);
        self
    }

    /// What both capabilities' own grants allow, written out as grants of its own (§8.7:
    /// a token's capability is the requested one intersected with its key's). For each
    /// resource of `self`, in order, and each of `other`, in order: the names both patterns
    /// match, with the operations both grant. `None` when nothing is left. A chat room's
    /// channel counts as matched by its room's pattern (`my-room` and `my-room::$chat` give
    /// `my-room::$chat`, ably-chat.md §5.1).
    ///
    /// Some cases are approximate: a lone `*` (which excludes `[`-qualified names) against a
    /// pattern whose first segment is `*` keeps the latter, which also matches `[`-names; a
    /// pattern whose trailing `*` reaches rooms' channels only by the room rule (`x:*` and
    /// `x` share `x::$chat`) gives nothing for them. Enforcement stays exact, because a
    /// token is checked against its key again on use.
    pub fn intersection(&self, other: &Capability) -> Option<Capability> {
        let mut entries: Vec<Entry> = Vec::new();
        for mine in &self.entries {
            for theirs in &other.entries {
                let names = mine.common_operations(theirs);
                if names.is_empty() {
                    continue;
                }
                let bits = names
                    .iter()
                    .filter_map(|n| Operation::parse(n))
                    .fold(0, |acc, bit| acc | bit);
                let (a, b) = (mine.pattern.as_str(), theirs.pattern.as_str());
                let patterns = [
                    pattern_intersection(a, b),
                    room_intersection(a, b),
                    room_intersection(b, a),
                ];
                for pattern in patterns.into_iter().flatten() {
                    entries.push(Entry {
                        pattern,
                        names: names.clone(),
                        bits,
                    });
                }
            }
        }
        let entries = merge_duplicates(entries);
        (!entries.is_empty()).then(|| Capability::from_entries(entries))
    }

    /// True when one of this capability's own grants gives every operation (`*`) on a
    /// pattern matching `resource`.
    pub fn grants_all_operations_on(&self, resource: &str) -> bool {
        self.entries
            .iter()
            .any(|e| e.all_operations() && resource_matches(&e.pattern, resource))
    }

    /// The operations granted on `channel`.
    pub fn operations(&self, channel: &str) -> Operations {
        let mut bits = self
            .entries
            .iter()
            .filter(|e| resource_matches(&e.pattern, channel))
            .fold(0, |acc, e| acc | e.bits);
        for other in &self.also {
            bits &= other.operations(channel).0;
        }
        Operations(bits)
    }

    /// True when `op` is allowed on `channel`.
    pub fn allows(&self, channel: &str, op: Operation) -> bool {
        self.operations(channel).contains(op)
    }

    /// This capability's own grants, not those of the capabilities it was
    /// [intersected](Capability::intersect) with: each resource pattern with its operation
    /// names, in order (a list holding `*` is just `["*"]`). [`Capability::from_resources`]
    /// makes the same capability of them again.
    pub fn resources(&self) -> impl Iterator<Item = (&str, &[String])> + '_ {
        self.entries
            .iter()
            .map(|e| (e.pattern.as_str(), e.names.as_slice()))
    }

    /// The JSON text of this capability's own grants, resources and operations in the order
    /// given (an operation list holding `*` is just `["*"]`), as TokenDetails carries it.
    pub fn as_json(&self) -> &str {
        &self.source
    }
}

/// Joins entries with the same pattern into the first of them (JSON text may repeat a key,
/// and an intersection may reach one pattern twice), adding operations in order.
fn merge_duplicates(entries: Vec<Entry>) -> Vec<Entry> {
    let mut merged: Vec<Entry> = Vec::with_capacity(entries.len());
    for entry in entries {
        match merged.iter_mut().find(|m| m.pattern == entry.pattern) {
            Some(first) => {
                first.bits |= entry.bits;
                for name in entry.names {
                    if !first.names.contains(&name) {
                        first.names.push(name);
                    }
                }
                if first.all_operations() {
                    first.names = vec!["*".to_owned()];
                }
            }
            None => merged.push(entry),
        }
    }
    merged
}

/// A JSON object's members in document order (serde_json's `Value` sorts them).
struct Ordered(Vec<(String, serde_json::Value)>);

impl<'de> serde::Deserialize<'de> for Ordered {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Members;
        impl<'de> serde::de::Visitor<'de> for Members {
            type Value = Ordered;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Ordered, A::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry::<String, serde_json::Value>()? {
                    members.push(member);
                }
                Ok(Ordered(members))
            }
        }
        deserializer.deserialize_map(Members)
    }
}

fn invalid() -> ErrorInfo {
    ErrorInfo::new(
        codes::INVALID_PARAMETER,
        "capability must be a JSON object of resource to a non-empty list of operations",
    )
}

/// One segment of a resource pattern other than the lone `*` and `[*]*`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Segment<'a> {
    /// Exactly this text.
    Literal(&'a str),
    /// Any one segment.
    One,
}

impl<'a> Segment<'a> {
    /// The segment `text` stands for, taken alone.
    fn of(text: &'a str) -> Segment<'a> {
        if text == "*" {
            Segment::One
        } else {
            Segment::Literal(text)
        }
    }
}

/// A pattern as its fixed segments and whether a trailing `*` follows them (one or more
/// further segments of anything).
fn split_pattern(pattern: &str) -> SplitPattern<'_> {
    let mut segments: Vec<Segment> = pattern.split(':').map(Segment::of).collect();
    let tail = segments.last() == Some(&Segment::One);
    if tail {
        segments.pop();
    }
    (segments, tail)
}

/// The pattern matching exactly the names both `a` and `b` match by the §8.7 wildcards, or
/// `None` when no name matches both. The room rule of [`resource_matches`] is left to
/// [`Capability::intersection`], which also says what is approximate.
pub fn pattern_intersection(a: &str, b: &str) -> Option<String> {
    match (a, b) {
        ("[*]*", other) | (other, "[*]*") => return Some(other.to_owned()),
        ("*", "*") => return Some("*".to_owned()),
        ("*", other) | (other, "*") => {
            // A lone `*` leaves out `[`-qualified names: a pattern starting with one
            // matches none of its names; any other pattern matches only names it allows.
            return (!other.starts_with('[')).then(|| other.to_owned());
        }
        _ => {}
    }
    let (segments, tail) = segments_intersection(split_pattern(a), split_pattern(b))?;
    Some(join_pattern(&segments, tail))
}

/// The channels of the rooms both patterns match (ably-chat.md §5.1), when `chat` names
/// room channels (`<room>::$<rest>`, e.g. `dms:*::$chat`) and `other` names rooms (has no
/// `::$`): `other` ∩ `<room>`, followed by `::$<rest>`. `None` otherwise, and for a lone `*`
/// or `[*]*`, whose plain intersection with `chat` is `chat` itself.
fn room_intersection(chat: &str, other: &str) -> Option<String> {
    if other.contains(ROOM_SEPARATOR) || matches!(other, "*" | "[*]*") {
        return None;
    }
    let (room, rest) = chat.split_once(ROOM_SEPARATOR)?;
    if room.is_empty() {
        return None;
    }
    // Within `chat` more segments follow the room's, so a `*` ending them is one segment.
    let room = (room.split(':').map(Segment::of).collect(), false);
    let (segments, _) = segments_intersection(room, split_pattern(other))?;
    Some(format!(
        "{}{ROOM_SEPARATOR}{rest}",
        join_pattern(&segments, false)
    ))
}

/// Fixed segments and whether a trailing `*` follows them, as [`split_pattern`] gives them.
type SplitPattern<'a> = (Vec<Segment<'a>>, bool);

/// The split pattern matching exactly the names both split patterns match, if any.
fn segments_intersection<'a>(
    (mut short, mut short_tail): SplitPattern<'a>,
    (mut long, mut long_tail): SplitPattern<'a>,
) -> Option<SplitPattern<'a>> {
    if short.len() > long.len() {
        std::mem::swap(&mut short, &mut long);
        std::mem::swap(&mut short_tail, &mut long_tail);
    }
    // A pattern without a tail matches names of exactly its length, one with a tail longer
    // names than its fixed segments: the lengths must be able to meet.
    let lengths_meet = match (short_tail, long_tail) {
        (false, false) => short.len() == long.len(),
        (false, true) => false,
        (true, false) => long.len() > short.len(),
        (true, true) => true,
    };
    if !lengths_meet {
        return None;
    }
    let mut segments = Vec::with_capacity(long.len());
    for (i, segment) in long.iter().enumerate() {
        segments.push(match (short.get(i), *segment) {
            (None, s) => s,
            (Some(Segment::One), s) | (Some(&s), Segment::One) => s,
            (Some(Segment::Literal(x)), Segment::Literal(y)) if *x == y => Segment::Literal(y),
            (Some(_), _) => return None,
        });
    }
    // With both tails the longer prefix and a tail remain; with one, the other's exact length.
    Some((segments, short_tail && long_tail))
}

/// A split pattern written out again.
fn join_pattern(segments: &[Segment], tail: bool) -> String {
    let mut texts: Vec<&str> = segments
        .iter()
        .map(|s| match *s {
            Segment::Literal(text) => text,
            Segment::One => "*",
        })
        .collect();
    if tail {
        texts.push("*");
    }
    texts.join(":")
}

/// What separates an @ably/chat room's name from the rest of its channel's name
/// (`my-room::$chat`, CHA-RC3c).
const ROOM_SEPARATOR: &str = "::$";

/// Ably's resource matching (§8.7): `:`-separated segments; `*` stands for one segment, a
/// trailing `*` for one or more; a lone `*` matches every channel not starting with `[`;
/// `[*]*` matches everything. A chat room's channel, one whose name contains `::$`, is also
/// matched by every pattern matching its room's name, the part before the first `::$`:
/// `my-room` and `dms:*` match `my-room::$chat` and `dms:a::$chat` (ably-chat.md §5.1,
/// "capabilities can be configured at the room level").
pub fn resource_matches(pattern: &str, channel: &str) -> bool {
    wildcard_matches(pattern, channel)
        || room_of(channel).is_some_and(|room| wildcard_matches(pattern, room))
}

/// The room name of a chat room's channel: the non-empty part before its first `::$`.
fn room_of(channel: &str) -> Option<&str> {
    channel
        .split_once(ROOM_SEPARATOR)
        .map(|(room, _)| room)
        .filter(|room| !room.is_empty())
}

/// [`resource_matches`] by the §8.7 wildcards alone.
fn wildcard_matches(pattern: &str, channel: &str) -> bool {
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
    fn chat_operations_are_their_own_and_round_trip() {
        let chat = [
            ("message-update-own", Operation::MessageUpdateOwn),
            ("message-update-any", Operation::MessageUpdateAny),
            ("message-delete-own", Operation::MessageDeleteOwn),
            ("message-delete-any", Operation::MessageDeleteAny),
            ("annotation-publish", Operation::AnnotationPublish),
            ("annotation-subscribe", Operation::AnnotationSubscribe),
        ];
        for (name, op) in chat {
            let text = format!(r#"{{"room":["{name}","push-admin"]}}"#);
            let cap = Capability::parse(&text).unwrap();
            assert_eq!(cap.as_json(), text, "round trip");
            assert!(cap.allows("room", op), "{name}");
            for (other, other_op) in chat {
                assert_eq!(
                    cap.allows("room", other_op),
                    other == name,
                    "{name} vs {other}"
                );
            }
            assert!(
                !cap.allows("room", Operation::Publish),
                "{name} is not publish"
            );
            assert!(Capability::parse(r#"{"room":["*"]}"#)
                .unwrap()
                .allows("room", op));
        }
        let own = Capability::parse(r#"{"*":["message-update-own","message-delete-own"]}"#)
            .unwrap()
            .operations("room");
        assert!(own.contains(Operation::MessageUpdateOwn));
        assert!(!own.contains(Operation::MessageUpdateAny));
        assert!(!own.contains(Operation::MessageDeleteAny));
        assert_eq!(own.modes(), 0, "updates and deletes grant no mode");
    }

    #[test]
    fn annotation_operations_grant_annotation_modes_subscribe_only_on_request() {
        let modes = |text: &str| {
            let ops = Capability::parse(text).unwrap().operations("room");
            (ops.modes(), ops.default_modes())
        };
        assert_eq!(
            modes(r#"{"room":["annotation-publish"]}"#),
            (
                flags::MODE_ANNOTATION_PUBLISH,
                flags::MODE_ANNOTATION_PUBLISH
            )
        );
        assert_eq!(
            modes(r#"{"room":["annotation-subscribe"]}"#),
            (flags::MODE_ANNOTATION_SUBSCRIBE, 0)
        );
        let classic = flags::MODE_PRESENCE
            | flags::MODE_PUBLISH
            | flags::MODE_SUBSCRIBE
            | flags::MODE_PRESENCE_SUBSCRIBE;
        assert_eq!(
            modes(r#"{"room":["*"]}"#),
            (
                classic | flags::MODE_ANNOTATION_PUBLISH | flags::MODE_ANNOTATION_SUBSCRIBE,
                classic | flags::MODE_ANNOTATION_PUBLISH
            )
        );
        assert_eq!(
            modes(r#"{"room":["publish","subscribe","presence"]}"#),
            (classic, classic),
            "without annotation operations, no annotation mode"
        );
    }

    #[test]
    fn a_room_pattern_matches_the_room_channels() {
        for (pattern, channel) in [
            ("my-room", "my-room::$chat"),
            ("my-room", "my-room::$chat::$typing"),
            ("dms:*", "dms:a::$chat"),
            ("dms:*", "dms:a:b::$chat"),
            ("*:lobby", "en:lobby::$chat"),
            ("*", "lobby::$chat"),
            ("my-room::$chat", "my-room::$chat"),
            ("my-room:*", "my-room::$chat"),
        ] {
            assert!(
                resource_matches(pattern, channel),
                "{pattern} matches {channel}"
            );
        }
        for (pattern, channel) in [
            ("my-room", "my-room2::$chat"),
            ("my-room", "other::$chat"),
            ("my-room", "my-room:x::$chat"),
            ("my-room", "x:my-room::$chat"),
            ("my-room", "my-room:$chat"),
            ("my-room", "my-room::chat"),
            ("my-room::$chat", "my-room"),
            ("room", "::$chat"),
            ("*", "[meta]room::$chat"),
        ] {
            assert!(
                !resource_matches(pattern, channel),
                "{pattern} must not match {channel}"
            );
        }
        let cap = Capability::parse(r#"{"my-room":["publish"],"*":["subscribe"]}"#).unwrap();
        assert!(cap.allows("my-room::$chat", Operation::Publish));
        assert!(cap.allows("lobby::$chat", Operation::Subscribe));
        assert!(!cap.allows("my-room2::$chat", Operation::Publish));
        assert!(!cap.allows("other::$chat", Operation::Publish));
        let everything = Capability::parse(r#"{"dms:*":["*"]}"#).unwrap();
        assert!(everything.grants_all_operations_on("dms:a::$chat"));
        assert!(!everything.grants_all_operations_on("dm:a::$chat"));
        let key = Capability::parse(r#"{"my-room":["publish","subscribe"]}"#).unwrap();
        let token = Capability::parse(r#"{"*::$chat":["publish"]}"#).unwrap();
        let effective = token.intersect(key);
        assert!(effective.allows("my-room::$chat", Operation::Publish));
        assert!(!effective.allows("my-room::$chat", Operation::Subscribe));
        assert!(!effective.allows("my-room", Operation::Publish));
    }

    #[test]
    fn materialized_intersection_follows_rooms() {
        let cases = [
            (
                r#"{"my-room":["publish"]}"#,
                r#"{"my-room::$chat":["*"]}"#,
                Some(r#"{"my-room::$chat":["publish"]}"#),
            ),
            (
                r#"{"my-room::$chat":["publish"]}"#,
                r#"{"my-room":["*"]}"#,
                Some(r#"{"my-room::$chat":["publish"]}"#),
            ),
            (
                r#"{"dms:a::$chat":["subscribe"]}"#,
                r#"{"dms:*":["subscribe","publish"]}"#,
                Some(r#"{"dms:a::$chat":["subscribe"]}"#),
            ),
            (
                r#"{"*::$chat":["publish"]}"#,
                r#"{"news:today":["*"],"lobby":["*"]}"#,
                Some(r#"{"lobby::$chat":["publish"]}"#),
            ),
            (
                r#"{"dms:*::$chat":["publish"]}"#,
                r#"{"dms:*":["*"]}"#,
                Some(r#"{"dms:*::$chat":["publish"]}"#),
            ),
            (
                r#"{"my-room::$chat":["publish"]}"#,
                r#"{"*":["*"]}"#,
                Some(r#"{"my-room::$chat":["publish"]}"#),
            ),
            (
                r#"{"my-room":["publish"]}"#,
                r#"{"other::$chat":["*"]}"#,
                None,
            ),
            (
                r#"{"my-room":["publish"]}"#,
                r#"{"my-room2::$chat":["*"]}"#,
                None,
            ),
        ];
        for (asked, key, want) in cases {
            let asked = Capability::parse(asked).unwrap();
            let key = Capability::parse(key).unwrap();
            let granted = asked.intersection(&key);
            assert_eq!(
                granted.as_ref().map(Capability::as_json),
                want,
                "{} ∩ {}",
                asked.as_json(),
                key.as_json()
            );
        }
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
        assert_eq!(cap.as_json(), r#"{"b":["subscribe","publish"],"a":["*"]}"#);
    }

    #[test]
    fn resources_build_what_their_json_text_parses_to() {
        let built = Capability::from_resources([
            ("b", vec!["subscribe", "publish", "subscribe"]),
            ("a", vec!["publish", "*"]),
            ("b", vec!["history"]),
        ])
        .unwrap();
        let parsed =
            Capability::parse(r#"{"b":["subscribe","publish"],"a":["*"],"b":["history"]}"#)
                .unwrap();
        assert_eq!(built, parsed);
        assert_eq!(
            built.as_json(),
            r#"{"b":["subscribe","publish","history"],"a":["*"]}"#
        );
        assert!(built.allows("a", Operation::Presence) && !built.allows("c", Operation::Subscribe));
        let again = Capability::from_resources(built.resources()).unwrap();
        assert_eq!(again, built);
        let nothing: [(&str, [&str; 0]); 0] = [];
        assert_eq!(Capability::from_resources(nothing).unwrap().as_json(), "{}");
        for (resource, ops) in [("", vec!["publish"]), ("a", vec![]), ("a", vec!["fly"])] {
            let refused = Capability::from_resources([(resource, ops.clone())]).unwrap_err();
            let text = format!(
                "{{{}:{}}}",
                serde_json::to_string(resource).unwrap(),
                serde_json::to_string(&ops).unwrap()
            );
            assert_eq!(refused, Capability::parse(&text).unwrap_err(), "{text}");
        }
    }

    #[test]
    fn pattern_intersections_match_what_both_match() {
        let cases = [
            ("chat:*", "*", Some("chat:*")),
            ("*", "[admin]users", None),
            ("[*]*", "[admin]users", Some("[admin]users")),
            ("*", "[*]*", Some("*")),
            ("chat:*", "chat:room:*", Some("chat:room:*")),
            ("chat:*", "*:lobby", Some("chat:lobby")),
            ("chat:*", "chat", None),
            ("chat", "chat:*", None),
            ("a:*:c", "*:b:*", Some("a:b:c")),
            ("a:*:c", "a:b", None),
            ("a:*", "*:*", Some("a:*")),
            ("a:*", "*:b:*", Some("a:b:*")),
            ("news", "chat:*", None),
            ("news", "news", Some("news")),
        ];
        for (a, b, want) in cases {
            assert_eq!(pattern_intersection(a, b).as_deref(), want, "{a} ∩ {b}");
            assert_eq!(pattern_intersection(b, a).as_deref(), want, "{b} ∩ {a}");
        }
    }

    #[test]
    fn materialized_intersection_keeps_the_requested_order_and_only_common_operations() {
        let key = Capability::parse(r#"{"chat:*":["subscribe","publish"],"news":["*"]}"#).unwrap();
        let asked =
            Capability::parse(r#"{"*":["publish","presence","subscribe"],"news":["history"]}"#)
                .unwrap();
        let granted = asked.intersection(&key).unwrap();
        assert_eq!(
            granted.as_json(),
            r#"{"chat:*":["publish","subscribe"],"news":["publish","presence","subscribe","history"]}"#
        );
        assert!(!granted.allows("chat:a", Operation::Presence));
        assert!(granted.allows("news", Operation::History));
        let all = Capability::parse(r#"{"*":["*"]}"#).unwrap();
        assert_eq!(
            all.intersection(&key).unwrap().as_json(),
            key.as_json(),
            "everything asked of a key gets exactly the key"
        );
        let elsewhere = Capability::parse(r#"{"admin:*":["publish"]}"#).unwrap();
        assert!(elsewhere.intersection(&key).is_none());
        let other_ops = Capability::parse(r#"{"chat:1":["history"]}"#).unwrap();
        assert!(other_ops.intersection(&key).is_none());
    }
}
