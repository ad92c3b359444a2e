//! Bits of the `flags` field (§3.3): attach state on ATTACHED and the channel modes granted by
//! a capability (§8.8).

/// ATTACHED: a presence SYNC follows.
pub const HAS_PRESENCE: u64 = 1;
/// ATTACHED: backlog (rewind) messages follow.
pub const HAS_BACKLOG: u64 = 1 << 1;
/// ATTACHED: continuity since the ATTACH's `channelSerial` is preserved.
pub const RESUMED: u64 = 1 << 2;
/// ATTACH from clients ≤ 2.26.0 re-attaching a channel; only a hint.
pub const ATTACH_RESUME: u64 = 1 << 5;
/// Mode: may enter presence.
pub const MODE_PRESENCE: u64 = 1 << 16;
/// Mode: may publish.
pub const MODE_PUBLISH: u64 = 1 << 17;
/// Mode: receives messages.
pub const MODE_SUBSCRIBE: u64 = 1 << 18;
/// Mode: receives presence events.
pub const MODE_PRESENCE_SUBSCRIBE: u64 = 1 << 19;
/// Mode: may publish annotations.
pub const MODE_ANNOTATION_PUBLISH: u64 = 1 << 21;
/// Mode: receives annotations.
pub const MODE_ANNOTATION_SUBSCRIBE: u64 = 1 << 22;
/// Mode: receives LiveObjects state.
pub const MODE_OBJECT_SUBSCRIBE: u64 = 1 << 24;
/// Mode: may publish LiveObjects operations.
pub const MODE_OBJECT_PUBLISH: u64 = 1 << 25;
/// Every mode bit; the client reads its modes as `flags & MODE_ALL`.
pub const MODE_ALL: u64 = MODE_PRESENCE
    | MODE_PUBLISH
    | MODE_SUBSCRIBE
    | MODE_PRESENCE_SUBSCRIBE
    | MODE_ANNOTATION_PUBLISH
    | MODE_ANNOTATION_SUBSCRIBE
    | MODE_OBJECT_SUBSCRIBE
    | MODE_OBJECT_PUBLISH;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_values_match_the_protocol() {
        assert_eq!(
            MODE_PRESENCE | MODE_PUBLISH | MODE_SUBSCRIBE | MODE_PRESENCE_SUBSCRIBE,
            983_040
        );
        assert_eq!(MODE_ALL, 57_606_144);
    }
}
