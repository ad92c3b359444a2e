//! Connection state that outlives a socket (§4.6, checklist 12e): the connectionId and its
//! secret key, the identity and capability, the msgSerial ledger used to de-duplicate resent
//! publishes, and which socket currently serves the connection. Kept for `connectionStateTtl`
//! after a socket drops, so a client that resumes keeps its connectionId.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use dashmap::DashMap;
use protocol::{Capability, ErrorInfo};
use rand::distributions::Alphanumeric;
use rand::Rng;
use subtle::ConstantTimeEq;

use tokio::sync::{oneshot, watch};

use super::ledger::{Ledger, Seen};
use crate::auth::{Identity, TokenStamp};
use crate::channel::PublishOutcome;
use crate::outbox::Outbox;

/// What the connection may do and who it is; replaced on resume and on in-band AUTH.
#[derive(Clone, Debug)]
pub struct Authority {
    /// The identity of §8.6.
    pub identity: Identity,
    /// The effective capability.
    pub capability: Capability,
    /// When the credential expires (ms).
    pub expires_at: Option<i64>,
    /// Key, clientId claim and issue time of a token the broker's keys signed, so that a
    /// revocation can find the connections using it (`revocation.rs`).
    pub token: Option<TokenStamp>,
}

/// A publish's place behind the connection's earlier ones (see [`Session::publish_turn`]).
/// Dropping it, once the publish has reached its channel or been refused, lets the next go.
pub struct Turn {
    earlier: Option<oneshot::Receiver<()>>,
    _done: oneshot::Sender<()>,
}

impl Turn {
    /// Waits until the connection's earlier publishes have reached their channels.
    pub async fn wait(&mut self) {
        if let Some(earlier) = self.earlier.take() {
            // Never sent: the sender's drop is the signal.
            let _ = earlier.await;
        }
    }
}

/// The state of one connection, shared by the sockets that serve it in turn.
pub struct Session {
    /// The connectionId (no `:`, §4.3).
    pub id: String,
    /// Echo own messages back (`echo` query param).
    pub echo: bool,
    state: Mutex<State>,
    /// Counts the outcomes settled in the ledger, for a resend waiting on one.
    settled: watch::Sender<u64>,
}

struct State {
    /// The key a client presents to resume; a new one on every bind, so only the socket that
    /// bound last can resume (checklist 12e).
    key: String,
    authority: Authority,
    socket: Option<(u64, Outbox)>,
    generation: u64,
    presence_channels: std::collections::BTreeSet<String>,
    ledger: Ledger,
    /// Closes once the connection's last publish that took a [`Turn`] has reached its channel.
    last_turn: Option<oneshot::Receiver<()>>,
    closed: bool,
}

/// A connection key: `<connectionId>!<secret>`.
fn new_key(id: &str) -> String {
    format!("{id}!{}", random_text(24))
}

fn random_text(len: usize) -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

impl Session {
    fn new(id: String, authority: Authority, echo: bool) -> Session {
        Session {
            echo,
            state: Mutex::new(State {
                key: new_key(&id),
                authority,
                socket: None,
                generation: 0,
                presence_channels: Default::default(),
                ledger: Ledger::default(),
                last_turn: None,
                closed: false,
            }),
            settled: watch::Sender::new(0),
            id,
        }
    }

    /// The key the client presents to resume: `<connectionId>!<secret>`.
    pub fn connection_key(&self) -> String {
        self.state.lock().expect("session lock").key.clone()
    }

    /// The current identity and capability.
    pub fn authority(&self) -> Authority {
        self.state.lock().expect("session lock").authority.clone()
    }

    /// Replaces identity and capability (resume with fresh credentials, in-band AUTH).
    pub fn set_authority(&self, authority: Authority) {
        self.state.lock().expect("session lock").authority = authority;
    }

    /// Makes socket `socket_id` the one serving this connection and gives the connection a new
    /// key (as Ably does on every resume and recover), so the socket it replaces can no longer
    /// resume it: a recovered copy and a still-running original then settle as two
    /// connections, the original's resume failing with 80008, instead of taking the connection
    /// from each other in turn. Returns the outbox of the socket it replaces, which the caller
    /// closes (a half-open old socket, §4.6).
    pub fn bind(&self, socket_id: u64, outbox: Outbox) -> Option<Outbox> {
        let mut state = self.state.lock().expect("session lock");
        state.key = new_key(&self.id);
        state.generation += 1;
        state
            .socket
            .replace((socket_id, outbox))
            .map(|(_, old)| old)
    }

    /// Releases the connection from `socket_id` if it still serves it. Returns the binding's
    /// generation when the connection is now without a socket and should expire unless
    /// resumed.
    pub fn unbind(&self, socket_id: u64) -> Option<u64> {
        let mut state = self.state.lock().expect("session lock");
        if state
            .socket
            .as_ref()
            .is_some_and(|(id, _)| *id == socket_id)
        {
            state.socket = None;
            return (!state.closed).then_some(state.generation);
        }
        None
    }

    /// True while unbound since binding `generation`.
    pub fn unbound_since(&self, generation: u64) -> bool {
        let state = self.state.lock().expect("session lock");
        state.socket.is_none() && state.generation == generation
    }

    /// Ends the connection from the server side: sends `farewell` on its socket (if one is
    /// bound) and makes it unresumable. Used when the user behind it is deleted.
    pub fn evict(&self, farewell: protocol::ProtocolMessage) {
        let mut state = self.state.lock().expect("session lock");
        state.closed = true;
        if let Some((_, outbox)) = &state.socket {
            outbox.close(Some(farewell));
        }
    }

    /// Sends `farewell` on the socket serving this connection (if one is bound) and closes it,
    /// leaving the connection resumable: its token was revoked, and the client resumes with
    /// a new one.
    pub fn disconnect(&self, farewell: protocol::ProtocolMessage) {
        let state = self.state.lock().expect("session lock");
        if let Some((_, outbox)) = &state.socket {
            outbox.close(Some(farewell));
        }
    }

    /// Queues `message` on the socket serving this connection, if one is bound (AUTH when a
    /// revocation with a re-authentication margin reaches its token).
    pub fn send(&self, message: &protocol::ProtocolMessage) {
        let state = self.state.lock().expect("session lock");
        if let Some((_, outbox)) = &state.socket {
            let _ = outbox.push(message);
        }
    }

    /// Remembers that the connection used presence on `channel`, so its members there leave
    /// when it ends even if its last socket never re-attached the channel.
    pub fn used_presence(&self, channel: &str) {
        let mut state = self.state.lock().expect("session lock");
        if !state.presence_channels.contains(channel) {
            state.presence_channels.insert(channel.to_owned());
        }
    }

    /// Channels where the connection used presence.
    pub fn presence_channels(&self) -> Vec<String> {
        let state = self.state.lock().expect("session lock");
        state.presence_channels.iter().cloned().collect()
    }

    /// Marks the connection closed by the client: it can no longer be resumed.
    pub fn close(&self) {
        self.state.lock().expect("session lock").closed = true;
    }

    /// Checks a msgSerial against those already processed (§4.6: de-duplicate by
    /// (connectionId, msgSerial), gaps allowed).
    pub fn seen(&self, msg_serial: u64) -> Seen {
        self.state
            .lock()
            .expect("session lock")
            .ledger
            .seen(msg_serial)
    }

    /// Records a newly processed msgSerial whose outcome is still to come; [`Session::settle`]
    /// keeps the outcome once known.
    pub fn record(&self, msg_serial: u64) {
        let mut state = self.state.lock().expect("session lock");
        state.ledger.record(msg_serial);
    }

    /// Records a newly processed msgSerial that was refused at once.
    pub fn record_refusal(&self, msg_serial: u64, error: ErrorInfo) {
        let mut state = self.state.lock().expect("session lock");
        state.ledger.record_answered(msg_serial, &Err(error));
    }

    /// The place of a new publish among the connection's publishes, when it cannot go to its
    /// channel at once: it is to be `reviewed` (by the moderation hook, which takes a while),
    /// or an earlier publish under review has not reached its channel yet. `None` otherwise,
    /// the usual case, and the publish goes straight on. Take it before the msgSerial's ACK
    /// is queued, in msgSerial order.
    pub fn publish_turn(&self, reviewed: bool) -> Option<Turn> {
        let mut state = self.state.lock().expect("session lock");
        let mut earlier = state.last_turn.take();
        if let Some(last) = &mut earlier {
            if last.try_recv() != Err(oneshot::error::TryRecvError::Empty) {
                earlier = None;
            }
        }
        if earlier.is_none() && !reviewed {
            return None;
        }
        let (done, next) = oneshot::channel();
        state.last_turn = Some(next);
        Some(Turn {
            earlier,
            _done: done,
        })
    }

    /// Keeps the outcome of a recorded msgSerial, and wakes the resends waiting for one.
    pub fn settle(&self, msg_serial: u64, outcome: &PublishOutcome) {
        let mut state = self.state.lock().expect("session lock");
        state.ledger.settle(msg_serial, outcome);
        drop(state);
        self.settled
            .send_modify(|count| *count = count.wrapping_add(1));
    }

    /// The answer to a resent msgSerial of `items` messages, once the ledger has it (§4.6):
    /// the original publish's outcome, or an ACK without serials when the ledger no longer
    /// remembers it.
    pub async fn outcome(&self, msg_serial: u64, items: usize) -> PublishOutcome {
        let mut settled = self.settled.subscribe();
        loop {
            match self.seen(msg_serial) {
                Seen::Answered(outcome) => return outcome,
                Seen::Waiting => {}
                Seen::Forgotten | Seen::New => return Ok(vec![None; items]),
            }
            // Settling happens under the reply's guarantee (a dropped reply answers 50001), and
            // the sender lives as long as `self`.
            if settled.changed().await.is_err() {
                return Ok(vec![None; items]);
            }
        }
    }
}

/// Every live or resumable connection, by connectionId.
#[derive(Default)]
pub struct Sessions {
    map: DashMap<String, Arc<Session>>,
}

impl Sessions {
    /// Creates a connection with a fresh id and key.
    pub fn create(&self, authority: Authority, echo: bool) -> Arc<Session> {
        loop {
            let id = random_text(12);
            let session = Arc::new(Session::new(id.clone(), authority.clone(), echo));
            if let dashmap::Entry::Vacant(slot) = self.map.entry(id) {
                slot.insert(session.clone());
                return session;
            }
        }
    }

    /// Takes in a connection that another node of the cluster served (`cluster/mod.rs`), under
    /// its connectionId, with an empty msgSerial ledger: its resent publishes are stored once
    /// by their message ids instead.
    pub fn adopt(&self, id: String, authority: Authority, echo: bool) -> Arc<Session> {
        let session = Arc::new(Session::new(id.clone(), authority, echo));
        self.map.insert(id, session.clone());
        session
    }

    /// Lets go of a connection that another node of the cluster has resumed: closes its
    /// socket without a word (the client has already left it) and forgets it. Returns false
    /// when the connection was not here (it expired).
    pub fn take_over(&self, id: &str) -> bool {
        let Some((_, session)) = self.map.remove(id) else {
            return false;
        };
        let mut state = session.state.lock().expect("session lock");
        state.closed = true;
        if let Some((_, outbox)) = &state.socket {
            outbox.close(None);
        }
        true
    }

    /// Finds the connection a `resume`/`recover` key names, checking its secret in constant
    /// time. `Err` carries the error for the new connection's CONNECTED (§4.6).
    pub fn find(&self, connection_key: &str) -> Result<Arc<Session>, ErrorInfo> {
        use protocol::error::codes;
        let Some((id, _)) = connection_key.split_once('!') else {
            return Err(ErrorInfo::new(
                codes::INVALID_CONNECTION_KEY,
                "Invalid connection key",
            ));
        };
        let expired = || {
            ErrorInfo::new(
                codes::RESUME_FAILED,
                "Unable to recover connection (connection expired)",
            )
        };
        let session = self.map.get(id).map(|s| s.clone()).ok_or_else(expired)?;
        let state = session.state.lock().expect("session lock");
        let matches: bool = state.key.as_bytes().ct_eq(connection_key.as_bytes()).into();
        if !matches || state.closed {
            return Err(expired());
        }
        drop(state);
        Ok(session)
    }

    /// Forgets a connection at once (CLOSE).
    pub fn remove(&self, id: &str) {
        self.map.remove(id);
    }

    /// Forgets `session` after `ttl` unless a socket has bound it again since `generation`.
    pub fn expire_later(self: &Arc<Self>, session: Arc<Session>, generation: u64, ttl: Duration) {
        let sessions = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(ttl).await;
            sessions.map.remove_if(&session.id, |_, s| {
                Arc::ptr_eq(s, &session) && s.unbound_since(generation)
            });
        });
    }

    /// Connections whose reported clientId is `client_id`.
    pub fn of_client(&self, client_id: &str) -> Vec<Arc<Session>> {
        self.map
            .iter()
            .filter(|s| s.authority().identity.reported.as_deref() == Some(client_id))
            .map(|s| s.value().clone())
            .collect()
    }

    /// Connections whose authority satisfies `predicate`.
    pub fn matching(&self, predicate: impl Fn(&Authority) -> bool) -> Vec<Arc<Session>> {
        self.map
            .iter()
            .filter(|s| predicate(&s.state.lock().expect("session lock").authority))
            .map(|s| s.value().clone())
            .collect()
    }

    /// Connections known (bound or awaiting resume).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when no connection is known.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Identity;
    use crate::channel::Reply;

    fn session() -> Arc<Session> {
        let authority = Authority {
            identity: Identity {
                reported: None,
                default: None,
                any: false,
                user_claims: Default::default(),
            },
            capability: Capability::all(),
            expires_at: None,
            token: None,
        };
        Sessions::default().create(authority, true)
    }

    #[tokio::test]
    async fn a_publish_behind_a_reviewed_one_waits_for_it_and_then_the_queue_is_empty() {
        let session = session();
        assert!(session.publish_turn(false).is_none(), "nothing to wait for");
        let first = session
            .publish_turn(true)
            .expect("a reviewed publish takes a turn");
        let mut second = session.publish_turn(false).expect("behind the first");
        let mut waiting = Box::pin(second.wait());
        assert!(futures_util::poll!(&mut waiting).is_pending());
        drop(first);
        waiting.await;
        drop(second);
        assert!(session.publish_turn(false).is_none(), "the queue ran empty");
    }

    /// A reply that writes into the ledger, as `actions::track` makes it.
    fn tracked(session: &Arc<Session>, msg_serial: u64) -> Reply {
        session.record(msg_serial);
        let (reply, _publisher_gone) = Reply::new();
        let session = Arc::downgrade(session);
        reply.keeping(move |outcome| {
            if let Some(session) = session.upgrade() {
                session.settle(msg_serial, outcome);
            }
        })
    }

    /// §4.6: a msgSerial resent on a resumed socket while the original publish is still
    /// waiting for its channel gets the original's serials, even though the socket that sent
    /// it first is gone.
    #[tokio::test]
    async fn a_resend_waiting_for_its_channel_gets_the_original_answer() {
        let session = session();
        let reply = tracked(&session, 7);
        let resend = tokio::spawn({
            let session = session.clone();
            async move { session.outcome(7, 1).await }
        });
        tokio::task::yield_now().await;
        reply.send(Ok(vec![Some("e:0000000000000042".to_owned())]));
        let outcome = resend.await.unwrap();
        assert_eq!(outcome, Ok(vec![Some("e:0000000000000042".to_owned())]));
    }

    /// A channel that stops without answering leaves 50001 in the ledger, so a waiting
    /// resend is NACKed rather than left hanging.
    #[tokio::test]
    async fn a_reply_dropped_unanswered_settles_the_resend_with_50001() {
        let session = session();
        let reply = tracked(&session, 3);
        let resend = tokio::spawn({
            let session = session.clone();
            async move { session.outcome(3, 1).await }
        });
        tokio::task::yield_now().await;
        drop(reply);
        let error = resend.await.unwrap().unwrap_err();
        assert_eq!(error.code, protocol::error::codes::INTERNAL_CHANNEL);
        assert!(matches!(session.seen(3), Seen::Answered(Err(_))));
    }
}
