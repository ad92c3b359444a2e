//! A backend that keeps everything in memory and is durable at once: for unit tests of the
//! channel core, and the plainest statement of what a backend must do. It keeps the newest
//! `max_messages` of each channel and remembers every app-set id it still holds. A channel
//! reopened (after its actor retired) continues where it was. It can be told to fail appends,
//! so that tests see the failure answers.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;
use protocol::{Message, PresenceMessage};

use super::presence::{self, PresenceSet};
use super::{
    Appended, Backend, Committed, Draft, Head, PresenceChange, Query, Stored, Stream, WhenDurable,
};
use crate::auth::now_ms;
use crate::store::{format_serial, Direction, StoreError};

/// The in-memory backend.
pub struct MemoryBackend {
    epoch: String,
    max_messages: usize,
    channels: Mutex<HashMap<String, Arc<Mutex<Channel>>>>,
    failing: Arc<AtomicBool>,
}

#[derive(Default)]
struct Channel {
    messages: BTreeMap<u64, Message>,
    ids: HashMap<String, String>,
    last: u64,
    last_timestamp: i64,
    presence: BTreeMap<u64, Message>,
    presence_last: u64,
}

impl MemoryBackend {
    /// An empty backend with serials of `epoch`, keeping `max_messages` per channel.
    pub fn new(epoch: &str, max_messages: usize) -> Self {
        MemoryBackend {
            epoch: epoch.to_owned(),
            max_messages,
            channels: Mutex::new(HashMap::new()),
            failing: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Makes every append fail (`true`) or succeed again (`false`).
    pub fn fail_appends(&self, failing: bool) {
        self.failing.store(failing, Ordering::Relaxed);
    }

    fn channel(&self, name: &str) -> Arc<Mutex<Channel>> {
        let mut channels = self.channels.lock().expect("memory backend lock");
        channels.entry(name.to_owned()).or_default().clone()
    }
}

impl Backend for MemoryBackend {
    fn epoch(&self, _channel: &str) -> &str {
        &self.epoch
    }

    fn open(&self, channel: &str) -> Result<Box<dyn Stream>, StoreError> {
        let data = self.channel(channel);
        let head = head(&self.epoch, &data.lock().expect("memory channel lock"));
        Ok(Box::new(MemoryStream {
            data,
            head,
            max_messages: self.max_messages,
            failing: self.failing.clone(),
            members: PresenceSet::default(),
        }))
    }

    fn read(&self, channel: &str, query: &Query) -> Result<Vec<(u64, Message)>, StoreError> {
        Ok(read(
            &self.channel(channel).lock().expect("lock").messages,
            query,
        ))
    }

    fn read_presence(
        &self,
        channel: &str,
        query: &Query,
    ) -> Result<Vec<(u64, Message)>, StoreError> {
        Ok(read(
            &self.channel(channel).lock().expect("lock").presence,
            query,
        ))
    }
}

fn head(epoch: &str, channel: &Channel) -> Head {
    Head {
        epoch: epoch.to_owned(),
        first: channel
            .messages
            .keys()
            .next()
            .copied()
            .unwrap_or(channel.last + 1),
        last: channel.last,
    }
}

fn read(log: &BTreeMap<u64, Message>, query: &Query) -> Vec<(u64, Message)> {
    let wanted = |(serial, m): (&u64, &Message)| {
        let ts = m.timestamp.unwrap_or(0);
        let in_time =
            query.start_ms.is_none_or(|s| ts >= s) && query.end_ms.is_none_or(|e| ts <= e);
        in_time.then(|| (*serial, m.clone()))
    };
    if query.from > query.to {
        return Vec::new();
    }
    let range = log.range(query.from..=query.to);
    match query.direction {
        Direction::Forwards => range.filter_map(wanted).take(query.limit).collect(),
        Direction::Backwards => range.rev().filter_map(wanted).take(query.limit).collect(),
    }
}

struct MemoryStream {
    data: Arc<Mutex<Channel>>,
    head: Head,
    max_messages: usize,
    failing: Arc<AtomicBool>,
    /// The member set lives with the stream, as in the local backend: a channel's actor
    /// retires only when nobody is present.
    members: PresenceSet,
}

impl MemoryStream {
    fn append_now(&mut self, drafts: Vec<Draft>) -> Result<Appended, StoreError> {
        let mut channel = self.data.lock().expect("memory channel lock");
        if self.failing.load(Ordering::Relaxed) {
            // Serials are never reused, even for a batch that failed.
            channel.last += drafts.iter().map(|d| d.messages.len() as u64).sum::<u64>();
            self.head = head(&self.head.epoch, &channel);
            return Err(StoreError::Engine("appends are failing".to_owned()));
        }
        let timestamp = now_ms().max(channel.last_timestamp);
        let mut appended = Appended {
            timestamp,
            ..Appended::default()
        };
        for draft in drafts {
            let mut stored = Stored::default();
            for mut m in draft.messages {
                let known = m.id.as_ref().filter(|_| draft.app_ids);
                if let Some(serial) = known.and_then(|id| channel.ids.get(id)) {
                    stored.serials.push(Some(serial.clone()));
                    continue;
                }
                channel.last += 1;
                let serial = format_serial(&self.head.epoch, channel.last);
                super::settle(&mut m, Some(serial.clone()), timestamp);
                if let Some(id) = m.id.clone().filter(|_| draft.app_ids) {
                    channel.ids.insert(id, serial.clone());
                }
                let position = channel.last;
                channel.messages.insert(position, m.clone());
                stored.serials.push(Some(serial));
                stored.fresh.push(m);
                appended.count += 1;
            }
            appended.stored.push(stored);
        }
        channel.last_timestamp = timestamp;
        while channel.messages.len() > self.max_messages {
            if let Some((_, gone)) = channel.messages.pop_first() {
                if let Some(id) = gone.id {
                    channel.ids.remove(&id);
                }
            }
        }
        self.head = head(&self.head.epoch, &channel);
        Ok(appended)
    }
}

impl Stream for MemoryStream {
    fn head(&self) -> &Head {
        &self.head
    }

    fn append(&mut self, drafts: Vec<Draft>) -> BoxFuture<'_, Result<Appended, StoreError>> {
        let result = self.append_now(drafts);
        Box::pin(std::future::ready(result))
    }

    fn committed(&mut self) -> BoxFuture<'_, Committed> {
        // Appends are the only writes, and they hand back what they stored.
        Box::pin(std::future::pending())
    }

    fn when_durable(&mut self, _count: u64, then: WhenDurable) {
        then(Ok(()))
    }

    fn refresh(&mut self) -> Result<(), StoreError> {
        self.head = head(&self.head.epoch, &self.data.lock().expect("lock"));
        Ok(())
    }

    fn read(&self, query: &Query) -> Result<Vec<(u64, Message)>, StoreError> {
        Ok(read(
            &self.data.lock().expect("memory channel lock").messages,
            query,
        ))
    }

    fn members(&self) -> &PresenceSet {
        &self.members
    }

    fn presence(
        &mut self,
        change: PresenceChange,
    ) -> BoxFuture<'_, Result<Vec<PresenceMessage>, StoreError>> {
        let events = self.members.change(change);
        let mut channel = self.data.lock().expect("memory channel lock");
        for event in &events {
            channel.presence_last += 1;
            let position = channel.presence_last;
            channel
                .presence
                .insert(position, presence::to_record(event));
        }
        while channel.presence.len() > self.max_messages {
            channel.presence.pop_first();
        }
        drop(channel);
        Box::pin(std::future::ready(Ok(events)))
    }
}
