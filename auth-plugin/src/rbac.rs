//! From Auth0 authorisation data to an Ably capability. Each entry of the `permissions` claim
//! reads `<operation>:<channel-pattern>` (e.g. `publish:chat:*`, `subscribe:*`, `*:room-1`),
//! with the pattern following the capability wildcard rules (§8.7 of
//! `../shared/ably-protocol.md`); `admin:users` grants the admin routes instead. Role names
//! from a configured claim map to capabilities in the config file. Users with neither get the
//! configured default. `docs/auth.md` documents the grammar.

use std::collections::{BTreeMap, BTreeSet};

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
];

/// The outcome of mapping a token's permissions and roles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grants {
    /// The capability as Ably JSON text.
    pub capability: String,
    /// Whether the user may use the admin routes.
    pub admin: bool,
    /// Entries that were ignored because they did not parse.
    pub ignored: Vec<String>,
}

/// Maps `permissions` and `roles` to a capability, falling back to `default_capability`.
pub fn grants(
    permissions: &[String],
    roles: &[String],
    role_capabilities: &BTreeMap<String, String>,
    default_capability: &str,
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
        let Some(text) = role_capabilities.get(role) else {
            continue;
        };
        merge(&mut resources, text);
    }
    if resources.is_empty() {
        merge(&mut resources, default_capability);
    }
    let capability = serde_json::to_string(&resources).expect("map of strings serializes");
    Grants {
        capability,
        admin,
        ignored,
    }
}

fn merge(resources: &mut BTreeMap<String, BTreeSet<String>>, capability: &str) {
    let Ok(serde_json::Value::Object(map)) = serde_json::from_str(capability) else {
        return;
    };
    for (pattern, ops) in map {
        let entry = resources.entry(pattern).or_default();
        for op in ops
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|o| o.as_str())
        {
            entry.insert(op.to_owned());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
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
            r#"{"*":["subscribe"]}"#,
        );
        assert_eq!(
            g.capability,
            r#"{"*":["subscribe"],"chat:*":["publish","subscribe"]}"#
        );
        assert!(g.admin);
        assert_eq!(g.ignored, ["fly:away", "publish:"]);
        let cap = protocol::Capability::parse(&g.capability).unwrap();
        assert!(cap.allows("chat:1", protocol::Operation::Publish));
        assert!(!cap.allows("news", protocol::Operation::Publish));
    }

    #[test]
    fn roles_add_to_permissions_and_the_default_applies_to_neither() {
        let roles = BTreeMap::from([("moderator".to_owned(), r#"{"mod:*":["*"]}"#.to_owned())]);
        let g = grants(
            &[],
            &strings(&["moderator", "unknown"]),
            &roles,
            r#"{"*":["subscribe"]}"#,
        );
        assert_eq!(g.capability, r#"{"mod:*":["*"]}"#);
        let none = grants(&[], &[], &roles, r#"{"*":["subscribe"]}"#);
        assert_eq!(none.capability, r#"{"*":["subscribe"]}"#);
        assert!(!none.admin);
    }
}
