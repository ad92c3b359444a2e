//! From Auth0 authorisation data to an Ably capability. Each entry of the `permissions` claim
//! reads `<operation>:<channel-pattern>` (e.g. `publish:chat:*`, `subscribe:*`, `*:room-1`),
//! with the pattern following the capability wildcard rules (§8.7 of
//! `../shared/ably-protocol.md`); `admin:users` grants the admin routes instead. Role names
//! from a configured claim map to capabilities in the config file. Users with neither get the
//! configured default. The role and default capabilities arrive parsed (the config is parsed
//! once, at start-up), and the result is a parsed [`Capability`], which the broker uses as is.
//! `docs/auth.md` documents the grammar.

use std::collections::{BTreeMap, BTreeSet};

use protocol::Capability;

/// The permission that grants the user admin routes.
pub const ADMIN_PERMISSION: &str = "admin:users";

/// Capability operations a permission may name.
const OPERATIONS: &[&str] = &[
    "*",
    "subscribe",
    "publish",
    "presence",
    "history",
    "stats",
    "channel-metadata",
    "push-subscribe",
    "push-admin",
    "object-subscribe",
    "object-publish",
    "annotation-subscribe",
    "annotation-publish",
    "message-update-own",
    "message-update-any",
    "message-delete-own",
    "message-delete-any",
];

/// The outcome of mapping a token's permissions and roles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grants {
    /// The capability: resources in sorted order, each with its operations sorted.
    pub capability: Capability,
    /// Whether the user may use the admin routes.
    pub admin: bool,
    /// Entries that were ignored because they did not parse.
    pub ignored: Vec<String>,
}

/// Maps `permissions` and `roles` to a capability, falling back to `default_capability`.
pub fn grants(
    permissions: &[String],
    roles: &[String],
    role_capabilities: &BTreeMap<String, Capability>,
    default_capability: &Capability,
) -> Grants {
    let mut resources: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut admin = false;
    let mut ignored = Vec::new();
    for permission in permissions {
        if permission == ADMIN_PERMISSION {
            admin = true;
            continue;
        }
        match permission.split_once(':') {
            Some((op, pattern)) if OPERATIONS.contains(&op) && !pattern.is_empty() => {
                resources
                    .entry(pattern.to_owned())
                    .or_default()
                    .insert(op.to_owned());
            }
            _ => ignored.push(permission.clone()),
        }
    }
    for role in roles {
        if let Some(capability) = role_capabilities.get(role) {
            merge(&mut resources, capability);
        }
    }
    if resources.is_empty() {
        merge(&mut resources, default_capability);
    }
    // Every pattern is non-empty with at least one operation, and every operation is one
    // `OPERATIONS` lists or one a parsed capability already holds.
    let capability =
        Capability::from_resources(resources).expect("permissions and capabilities make one");
    Grants {
        capability,
        admin,
        ignored,
    }
}

/// Adds the grants of `capability` to `resources`.
fn merge(resources: &mut BTreeMap<String, BTreeSet<String>>, capability: &Capability) {
    for (pattern, ops) in capability.resources() {
        resources
            .entry(pattern.to_owned())
            .or_default()
            .extend(ops.iter().cloned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn capability(text: &str) -> Capability {
        Capability::parse(text).unwrap()
    }

    #[test]
    fn permissions_become_capabilities_and_admin() {
        let g = grants(
            &strings(&[
                "publish:chat:*",
                "subscribe:*",
                "subscribe:chat:*",
                "admin:users",
                "fly:away",
                "publish:",
            ]),
            &[],
            &BTreeMap::new(),
            &capability(r#"{"*":["subscribe"]}"#),
        );
        assert_eq!(
            g.capability.as_json(),
            r#"{"*":["subscribe"],"chat:*":["publish","subscribe"]}"#
        );
        assert!(g.admin);
        assert_eq!(g.ignored, ["fly:away", "publish:"]);
        assert!(g.capability.allows("chat:1", protocol::Operation::Publish));
        assert!(!g.capability.allows("news", protocol::Operation::Publish));
    }

    #[test]
    fn permissions_name_the_chat_operations() {
        let g = grants(
            &strings(&[
                "message-delete-any:chat:*",
                "message-update-own:chat:*",
                "annotation-publish:chat:*",
            ]),
            &[],
            &BTreeMap::new(),
            &capability(r#"{"*":["subscribe"]}"#),
        );
        assert!(g.ignored.is_empty(), "{:?}", g.ignored);
        assert_eq!(
            g.capability.as_json(),
            r#"{"chat:*":["annotation-publish","message-delete-any","message-update-own"]}"#
        );
        let room = "chat:lobby::$chat";
        assert!(g
            .capability
            .allows(room, protocol::Operation::MessageDeleteAny));
        assert!(!g
            .capability
            .allows(room, protocol::Operation::MessageUpdateAny));
    }

    #[test]
    fn roles_add_to_permissions_and_the_default_applies_to_neither() {
        let roles = BTreeMap::from([
            ("moderator".to_owned(), capability(r#"{"mod:*":["*"]}"#)),
            (
                "reader".to_owned(),
                capability(r#"{"news":["subscribe","history"]}"#),
            ),
        ]);
        let default = capability(r#"{"*":["subscribe"]}"#);
        let g = grants(&[], &strings(&["moderator", "unknown"]), &roles, &default);
        assert_eq!(g.capability.as_json(), r#"{"mod:*":["*"]}"#);
        let both = grants(
            &strings(&["publish:mod:x", "publish:news"]),
            &strings(&["reader", "moderator"]),
            &roles,
            &default,
        );
        assert_eq!(
            both.capability.as_json(),
            r#"{"mod:*":["*"],"mod:x":["publish"],"news":["history","publish","subscribe"]}"#
        );
        let none = grants(&[], &[], &roles, &default);
        assert_eq!(none.capability, default);
        assert!(!none.admin);
        let nothing = grants(&[], &[], &roles, &capability("{}"));
        assert_eq!(nothing.capability.as_json(), "{}");
    }
}
