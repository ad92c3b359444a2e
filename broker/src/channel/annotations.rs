//! Annotations and their summaries (issue 18; `../shared/ably-chat.md` §4, §5.6): reactions,
//! flags and votes on a message. An annotation is an entry of the channel's log like a change
//! ([`Message::ANNOTATION`], see [`Annotation::into_entry`]), at a position of its own after the
//! message it annotates. The server folds the annotations of each type into the message's
//! summary with the type's aggregation ([`Aggregate`]): after each publish that changes it, the
//! whole summary goes to subscribers as a `message.summary` entry of the log (so resume and
//! rewind replay it), and history and `getMessage` compute it afresh from the annotations, so a
//! summary never depends on which node wrote the last one.

use std::collections::{BTreeMap, HashMap};

use protocol::error::codes;
use protocol::{Annotation, ErrorInfo, Message};
use serde_json::{json, Map, Value};

use super::versions::{scan, Reader};
use crate::store::StoreError;

/// Aggregates a sequencer remembers before it forgets them all.
const MAX_REMEMBERED: usize = 1024;

/// How the annotations of a type add up (the part of the type after `:`, e.g. `distinct.v1`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Aggregation {
    /// `unique.v1`: each client holds at most one name per message; a new one moves it.
    Unique,
    /// `distinct.v1`: each client holds each name at most once.
    Distinct,
    /// `multiple.v1`: each client adds a count to a name, as often as it likes.
    Multiple,
    /// `flag.v1`: each client flags the message at most once.
    Flag,
    /// `total.v1`: a count, no clients.
    Total,
}

impl Aggregation {
    /// The aggregation of an annotation type `<namespace>:<aggregation>.v1`; 40003 otherwise.
    pub fn of(kind: &str) -> Result<Aggregation, ErrorInfo> {
        let aggregation = kind
            .split_once(':')
            .filter(|(namespace, _)| !namespace.is_empty())
            .map(|(_, aggregation)| aggregation);
        match aggregation {
            Some("unique.v1") => Ok(Aggregation::Unique),
            Some("distinct.v1") => Ok(Aggregation::Distinct),
            Some("multiple.v1") => Ok(Aggregation::Multiple),
            Some("flag.v1") => Ok(Aggregation::Flag),
            Some("total.v1") => Ok(Aggregation::Total),
            _ => Err(ErrorInfo::new(
                codes::INVALID_PARAMETER,
                format!(
                    "annotation type {kind:?} is not <namespace>:<aggregation>.v1 with an aggregation of unique, distinct, multiple, flag or total"
                ),
            )),
        }
    }
}

/// Checks an annotation a client publishes, once its clientId is settled: a known type, a
/// create or a delete, a name where the aggregation counts by name, a count only for
/// `multiple.v1` and at least 1, and an identified client where the aggregation counts
/// clients (40003 otherwise).
pub fn validate(annotation: &Annotation) -> Result<(), ErrorInfo> {
    let bad = |why: &str| Err(ErrorInfo::new(codes::INVALID_PARAMETER, why.to_owned()));
    let Some(kind) = annotation.kind.as_deref() else {
        return bad("an annotation needs a type");
    };
    let aggregation = Aggregation::of(kind)?;
    let action = annotation.action.unwrap_or(Annotation::CREATE);
    if action != Annotation::CREATE && action != Annotation::DELETE {
        return bad("an annotation's action is 0 (create) or 1 (delete)");
    }
    if annotation
        .message_serial
        .as_deref()
        .is_none_or(str::is_empty)
    {
        return bad("an annotation needs the serial of the message it annotates");
    }
    let named = match aggregation {
        Aggregation::Unique => action == Annotation::CREATE,
        Aggregation::Distinct | Aggregation::Multiple => true,
        Aggregation::Flag | Aggregation::Total => false,
    };
    if named && annotation.name.as_deref().is_none_or(str::is_empty) {
        return bad("an annotation of this type needs a name");
    }
    match (aggregation, annotation.count) {
        (Aggregation::Multiple, Some(0)) => return bad("an annotation's count is at least 1"),
        (Aggregation::Multiple, _) | (_, None) => {}
        (_, Some(_)) => return bad("only multiple.v1 annotations carry a count"),
    }
    let counts_clients = !matches!(aggregation, Aggregation::Multiple | Aggregation::Total);
    if counts_clients && annotation.client_id.is_none() {
        return bad("annotations of this type need an identified client");
    }
    Ok(())
}

/// Clients in the order they joined, each once.
#[derive(Clone, Debug, Default)]
struct Members {
    next: u64,
    by_client: HashMap<String, u64>,
}

impl Members {
    fn add(&mut self, client: &str) -> bool {
        if self.by_client.contains_key(client) {
            return false;
        }
        self.next += 1;
        self.by_client.insert(client.to_owned(), self.next);
        true
    }

    fn remove(&mut self, client: &str) -> bool {
        self.by_client.remove(client).is_some()
    }

    fn ordered(&self) -> Vec<&str> {
        let mut all: Vec<(&u64, &String)> = self.by_client.iter().map(|(c, at)| (at, c)).collect();
        all.sort();
        all.into_iter().map(|(_, c)| c.as_str()).collect()
    }

    /// `{total, clientIds, clipped}`, the list cut at `clip`.
    fn entry(&self, clip: usize) -> Value {
        let all = self.ordered();
        let clipped = all.len() > clip;
        json!({"total": all.len(), "clientIds": &all[..all.len().min(clip)], "clipped": clipped})
    }
}

/// One name's tally under `multiple.v1`.
#[derive(Clone, Debug, Default)]
struct Counts {
    order: Members,
    by_client: HashMap<String, u64>,
    unidentified: u64,
}

/// The state of one annotation type of one message.
#[derive(Clone, Debug)]
enum Tally {
    Unique(Members, HashMap<String, String>),
    Distinct(BTreeMap<String, Members>),
    Multiple(BTreeMap<String, Counts>),
    Flag(Members),
    Total(u64),
}

impl Tally {
    fn new(aggregation: Aggregation) -> Tally {
        match aggregation {
            Aggregation::Unique => Tally::Unique(Members::default(), HashMap::new()),
            Aggregation::Distinct => Tally::Distinct(BTreeMap::new()),
            Aggregation::Multiple => Tally::Multiple(BTreeMap::new()),
            Aggregation::Flag => Tally::Flag(Members::default()),
            Aggregation::Total => Tally::Total(0),
        }
    }

    /// Applies one annotation; whether the summary changed.
    fn apply(&mut self, annotation: &Annotation) -> bool {
        let create = annotation.action.unwrap_or(Annotation::CREATE) == Annotation::CREATE;
        let client = annotation.client_id.as_deref();
        let name = annotation.name.as_deref().unwrap_or_default();
        match self {
            Tally::Unique(order, names) => {
                let Some(client) = client else { return false };
                if !create {
                    names.remove(client);
                    return order.remove(client);
                }
                if names.get(client).map(String::as_str) == Some(name) {
                    return false;
                }
                // Moving to another name puts the client at the end of that name's list.
                order.remove(client);
                order.add(client);
                names.insert(client.to_owned(), name.to_owned());
                true
            }
            Tally::Distinct(names) => {
                let Some(client) = client else { return false };
                if create {
                    names.entry(name.to_owned()).or_default().add(client)
                } else {
                    let Some(members) = names.get_mut(name) else {
                        return false;
                    };
                    let removed = members.remove(client);
                    if members.by_client.is_empty() {
                        names.remove(name);
                    }
                    removed
                }
            }
            Tally::Multiple(names) => {
                if create {
                    let counts = names.entry(name.to_owned()).or_default();
                    let count = annotation.count.unwrap_or(1);
                    match client {
                        Some(client) => {
                            counts.order.add(client);
                            *counts.by_client.entry(client.to_owned()).or_default() += count;
                        }
                        None => counts.unidentified += count,
                    }
                    return true;
                }
                let (Some(client), Some(counts)) = (client, names.get_mut(name)) else {
                    return false;
                };
                let removed = counts.by_client.remove(client).is_some();
                counts.order.remove(client);
                if counts.by_client.is_empty() && counts.unidentified == 0 {
                    names.remove(name);
                }
                removed
            }
            Tally::Flag(members) => match client {
                Some(client) if create => members.add(client),
                Some(client) => members.remove(client),
                None => false,
            },
            Tally::Total(total) => {
                if create {
                    *total += 1;
                    true
                } else if *total > 0 {
                    *total -= 1;
                    true
                } else {
                    false
                }
            }
        }
    }

    /// The type's summary entry (`../shared/ably-chat.md` §5.6), client lists cut at `clip`;
    /// `None` when nothing is left to count.
    fn summary(&self, clip: usize) -> Option<Value> {
        let value = match self {
            Tally::Unique(order, names) => {
                let mut by_name: BTreeMap<&str, Members> = BTreeMap::new();
                for client in order.ordered() {
                    if let Some(name) = names.get(client) {
                        by_name.entry(name).or_default().add(client);
                    }
                }
                let entries: Map<String, Value> = by_name
                    .into_iter()
                    .map(|(name, members)| (name.to_owned(), members.entry(clip)))
                    .collect();
                (!entries.is_empty()).then_some(Value::Object(entries))?
            }
            Tally::Distinct(names) => {
                let entries: Map<String, Value> = names
                    .iter()
                    .map(|(name, members)| (name.clone(), members.entry(clip)))
                    .collect();
                (!entries.is_empty()).then_some(Value::Object(entries))?
            }
            Tally::Multiple(names) => {
                let entries: Map<String, Value> = names
                    .iter()
                    .map(|(name, counts)| {
                        let clients = counts.order.ordered();
                        let shown: Map<String, Value> = clients
                            .iter()
                            .take(clip)
                            .map(|c| ((*c).to_owned(), json!(counts.by_client[*c])))
                            .collect();
                        let total = counts.by_client.values().sum::<u64>() + counts.unidentified;
                        let entry = json!({
                            "total": total,
                            "clientIds": shown,
                            "totalUnidentified": counts.unidentified,
                            "clipped": clients.len() > clip,
                            "totalClientIds": clients.len(),
                        });
                        (name.clone(), entry)
                    })
                    .collect();
                (!entries.is_empty()).then_some(Value::Object(entries))?
            }
            Tally::Flag(members) if members.by_client.is_empty() => return None,
            Tally::Flag(members) => members.entry(clip),
            Tally::Total(0) => return None,
            Tally::Total(total) => json!({"total": total}),
        };
        Some(value)
    }
}

/// The annotations of one message, folded by type.
#[derive(Clone, Debug, Default)]
pub struct Aggregate {
    types: BTreeMap<String, Tally>,
}

impl Aggregate {
    /// Folds in one annotation (of a type [`validate`] accepted; others are ignored);
    /// whether the summary changed.
    pub fn apply(&mut self, annotation: &Annotation) -> bool {
        let Some(kind) = annotation.kind.as_deref() else {
            return false;
        };
        let Ok(aggregation) = Aggregation::of(kind) else {
            return false;
        };
        self.types
            .entry(kind.to_owned())
            .or_insert_with(|| Tally::new(aggregation))
            .apply(annotation)
    }

    /// The summary (`{type: entry}`, TM7), client lists cut at `clip` with `clipped` set.
    pub fn summary(&self, clip: usize) -> Map<String, Value> {
        self.types
            .iter()
            .filter_map(|(kind, tally)| Some((kind.clone(), tally.summary(clip)?)))
            .collect()
    }

    /// What one client contributed, each entry with the whole `total` but only that client
    /// in `clientIds` (`clipped` when others count too): the chat API's `client-reactions`
    /// (`../shared/ably-chat.md` §5.4 R9).
    pub fn summary_for(&self, client: &str, clip: usize) -> Map<String, Value> {
        let mut out = self.summary(clip.max(1));
        for (kind, entry) in out.iter_mut() {
            let Some(Tally::Unique(..) | Tally::Distinct(_) | Tally::Multiple(_)) =
                self.types.get(kind)
            else {
                continue;
            };
            let by_name = entry.as_object_mut().expect("named entries are objects");
            by_name.retain(|name, e| {
                let own = match self.types.get(kind) {
                    Some(Tally::Unique(_, names)) => {
                        names.get(client).map(String::as_str) == Some(name.as_str())
                    }
                    Some(Tally::Distinct(names)) => names
                        .get(name)
                        .is_some_and(|m| m.by_client.contains_key(client)),
                    Some(Tally::Multiple(names)) => names
                        .get(name)
                        .is_some_and(|c| c.by_client.contains_key(client)),
                    _ => false,
                };
                if !own {
                    return false;
                }
                let total = e["total"].as_u64().unwrap_or(0);
                match self.types.get(kind) {
                    Some(Tally::Multiple(names)) => {
                        let counts = &names[name.as_str()];
                        let mine = counts.by_client[client];
                        e["clientIds"] = json!({ client: mine });
                        e["clipped"] = json!(counts.by_client.len() > 1);
                    }
                    _ => {
                        e["clientIds"] = json!([client]);
                        e["clipped"] = json!(total > 1);
                    }
                }
                true
            });
        }
        out
    }
}

/// Folds the annotations of the message at `seq` (serial `serial`) found in the log up to
/// position `last`.
pub fn aggregate(
    read: Reader<'_>,
    seq: u64,
    serial: &str,
    last: u64,
) -> Result<Aggregate, StoreError> {
    let mut aggregate = Aggregate::default();
    scan(read, seq + 1, last, |_, m| {
        if m.serial.as_deref() == Some(serial) {
            if let Some(annotation) = Annotation::from_entry(&m) {
                aggregate.apply(&annotation);
            }
        }
    })?;
    Ok(aggregate)
}

/// The annotations of the message at `seq` (serial `serial`) in the log's order, from
/// position `from` on, at most `limit` of them, with their positions (REST `GET
/// …/annotations`, RSAN3).
pub fn list(
    read: Reader<'_>,
    serial: &str,
    from: u64,
    last: u64,
    limit: usize,
) -> Result<Vec<(u64, Annotation)>, StoreError> {
    let mut found = Vec::new();
    scan(read, from, last, |seq, m| {
        if found.len() < limit && m.serial.as_deref() == Some(serial) {
            if let Some(annotation) = Annotation::from_entry(&m) {
                found.push((seq, annotation));
            }
        }
    })?;
    Ok(found)
}

/// The `message.summary` entry that tells subscribers the whole summary of message `serial`.
pub fn summary_entry(serial: &str, summary: Map<String, Value>) -> Message {
    Message {
        serial: Some(serial.to_owned()),
        action: Some(Message::SUMMARY),
        annotations: Some(json!({ "summary": summary })),
        ..Message::default()
    }
}

/// The aggregates a channel's sequencer has built, by the annotated message's position.
#[derive(Default)]
pub struct Aggregates {
    known: HashMap<u64, Aggregate>,
}

impl Aggregates {
    /// The aggregate of the message at `seq`, read from the log up to `last` when not known.
    pub fn get(
        &mut self,
        read: Reader<'_>,
        seq: u64,
        serial: &str,
        last: u64,
    ) -> Result<&mut Aggregate, StoreError> {
        if !self.known.contains_key(&seq) {
            let aggregate = aggregate(read, seq, serial, last)?;
            if self.known.len() >= MAX_REMEMBERED {
                self.known.clear();
            }
            self.known.insert(seq, aggregate);
        }
        Ok(self.known.get_mut(&seq).expect("inserted above"))
    }

    /// Forgets the aggregate of the message at `seq` (another node annotated it).
    pub fn forget(&mut self, seq: u64) {
        self.known.remove(&seq);
    }

    /// Forgets everything (after a failed append, or an annotation the log already held).
    pub fn clear(&mut self) {
        self.known.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(kind: &str, action: u64, client: Option<&str>, name: &str) -> Annotation {
        Annotation {
            kind: Some(kind.into()),
            action: Some(action),
            client_id: client.map(str::to_owned),
            name: Some(name.into()),
            message_serial: Some("e-1".into()),
            ..Annotation::default()
        }
    }

    #[test]
    fn types_are_namespaced_known_aggregations() {
        assert_eq!(
            Aggregation::of("reaction:distinct.v1").unwrap(),
            Aggregation::Distinct
        );
        for bad in [
            "distinct.v1",
            ":distinct.v1",
            "reaction:sum.v1",
            "reaction:",
        ] {
            assert_eq!(Aggregation::of(bad).unwrap_err().code, 40003, "{bad}");
        }
        let mut anonymous = note("r:unique.v1", 0, None, "👍");
        assert_eq!(validate(&anonymous).unwrap_err().code, 40003);
        anonymous.kind = Some("r:multiple.v1".into());
        assert!(validate(&anonymous).is_ok());
        anonymous.count = Some(0);
        assert_eq!(validate(&anonymous).unwrap_err().code, 40003);
        let mut counted = note("r:distinct.v1", 0, Some("a"), "👍");
        counted.count = Some(2);
        assert_eq!(validate(&counted).unwrap_err().code, 40003);
    }

    #[test]
    fn unique_moves_a_client_and_distinct_keeps_each_name_once() {
        let mut a = Aggregate::default();
        assert!(a.apply(&note("r:unique.v1", 0, Some("ann"), "👍")));
        assert!(a.apply(&note("r:unique.v1", 0, Some("bob"), "👍")));
        assert!(
            !a.apply(&note("r:unique.v1", 0, Some("ann"), "👍")),
            "no-op"
        );
        assert!(a.apply(&note("r:unique.v1", 0, Some("ann"), "❤️")));
        let s = a.summary(10);
        assert_eq!(
            s["r:unique.v1"],
            json!({"👍": {"total": 1, "clientIds": ["bob"], "clipped": false},
                   "❤️": {"total": 1, "clientIds": ["ann"], "clipped": false}})
        );
        assert!(a.apply(&note("r:unique.v1", 1, Some("bob"), "ignored")));
        assert!(!a.summary(10)["r:unique.v1"]
            .as_object()
            .unwrap()
            .contains_key("👍"));

        for (client, name) in [("ann", "👍"), ("ann", "❤️"), ("bob", "👍"), ("ann", "👍")]
        {
            a.apply(&note("r:distinct.v1", 0, Some(client), name));
        }
        assert_eq!(
            a.summary(1)["r:distinct.v1"]["👍"],
            json!({"total": 2, "clientIds": ["ann"], "clipped": true}),
            "clipped at one client, total exact"
        );
        assert!(a.apply(&note("r:distinct.v1", 1, Some("ann"), "❤️")));
        assert!(!a.apply(&note("r:distinct.v1", 1, Some("ann"), "❤️")));
        assert!(a.summary(10)["r:distinct.v1"].get("❤️").is_none());
    }

    #[test]
    fn multiple_adds_counts_and_a_delete_takes_all_of_a_clients() {
        let mut a = Aggregate::default();
        let mut three = note("r:multiple.v1", 0, Some("ann"), "👏");
        three.count = Some(3);
        a.apply(&three);
        a.apply(&note("r:multiple.v1", 0, Some("ann"), "👏"));
        a.apply(&note("r:multiple.v1", 0, Some("bob"), "👏"));
        a.apply(&note("r:multiple.v1", 0, None, "👏"));
        assert_eq!(
            a.summary(10)["r:multiple.v1"]["👏"],
            json!({"total": 6, "clientIds": {"ann": 4, "bob": 1}, "totalUnidentified": 1,
                   "clipped": false, "totalClientIds": 2})
        );
        let mine = a.summary_for("bob", 10);
        assert_eq!(
            mine["r:multiple.v1"]["👏"]["clientIds"],
            json!({"bob": 1}),
            "only the client's own count"
        );
        assert_eq!(mine["r:multiple.v1"]["👏"]["total"], json!(6));
        assert!(a.apply(&note("r:multiple.v1", 1, Some("ann"), "👏")));
        assert_eq!(a.summary(10)["r:multiple.v1"]["👏"]["total"], json!(2));

        a.apply(&note("r:flag.v1", 0, Some("ann"), ""));
        a.apply(&note("r:total.v1", 0, None, ""));
        a.apply(&note("r:total.v1", 0, None, ""));
        let s = a.summary(10);
        assert_eq!(
            s["r:flag.v1"],
            json!({"total": 1, "clientIds": ["ann"], "clipped": false})
        );
        assert_eq!(s["r:total.v1"], json!({"total": 2}));
    }

    #[test]
    fn entries_round_trip_through_the_log() {
        let mut annotation = note("r:multiple.v1", 0, Some("ann"), "👏");
        annotation.count = Some(2);
        annotation.id = Some("x:0".into());
        let mut entry = annotation.clone().into_entry();
        assert!(entry.refers() && !entry.is_version());
        entry.place("e-9".into());
        let back = Annotation::from_entry(&entry).unwrap();
        assert_eq!(back.serial.as_deref(), Some("e-9"));
        assert_eq!(
            Annotation {
                serial: None,
                ..back
            },
            annotation
        );
    }
}
