//! The msgSerial ledger of one connection (§4.6): which msgSerials it has published and what
//! each was answered, so that a publish resent after a resume is answered again instead of
//! being applied twice.
//!
//! The ledger is plain data: a publish still waiting for its channel is a mark, and a settled
//! one keeps only its serials (or its error), boxed to their length, or just a position for
//! the usual one-message publish. The outcome is written in by the channel's reply
//! (`channel::Reply`), not by the socket awaiting it, so a resend on a resumed socket waits for
//! the ledger to change (`Session::outcome`) rather than for another socket's future. When
//! entries held that shared future (about 200 bytes each, 4,096 of them per connection) the
//! ledger was the largest part of the memory that grew with the messages published.

use std::collections::VecDeque;

use protocol::ErrorInfo;

use crate::channel::PublishOutcome;
use crate::store::{format_serial, parse_serial};

/// How many recent publishes a connection remembers with their answers. A client resends only
/// what it has no ACK for: those read ahead of their ACKs (`limits.max_pending_publishes`, 512
/// by default) and the ACKs lost with the socket, which are the newest. An older msgSerial is still known to be
/// a resend (the highest one is kept), so it is never applied twice; it is only answered
/// without its serials.
pub const LEDGER_SIZE: usize = 512;

/// What a msgSerial should be answered with.
pub enum Seen {
    /// Not seen before: publish it.
    New,
    /// Seen, and its channel has not answered yet: wait until the ledger has the answer.
    Waiting,
    /// Seen and answered: answer the same again.
    Answered(PublishOutcome),
    /// Seen too long ago to remember the answer: acknowledge without serials.
    Forgotten,
}

/// An outcome as the ledger keeps it once known. A publish of one message, the usual case, is
/// kept without an allocation: its serial as a position in the epoch the ledger remembers.
enum Settled {
    One(Option<u64>),
    Many(Box<[Option<Box<str>>]>),
    Err(Box<ErrorInfo>),
}

impl Settled {
    fn of(outcome: &PublishOutcome, epoch: &mut Option<Box<str>>) -> Self {
        let serials = match outcome {
            Err(e) => return Self::Err(Box::new(e.clone())),
            Ok(serials) => serials,
        };
        if let [serial] = serials.as_slice() {
            let Some(serial) = serial else {
                return Self::One(None);
            };
            if let Some((serial_epoch, position)) = parse_serial(serial) {
                let epoch = epoch.get_or_insert_with(|| serial_epoch.into());
                // `format_serial` pads to 16 digits: such a serial is rebuilt exactly.
                let digits = &serial[serial_epoch.len() + 1..];
                let canonical = digits.len() == 16 && digits.bytes().all(|b| b.is_ascii_digit());
                if **epoch == *serial_epoch && canonical {
                    return Self::One(Some(position));
                }
            }
        }
        Self::Many(
            serials
                .iter()
                .map(|s| s.as_deref().map(Box::from))
                .collect(),
        )
    }

    fn outcome(&self, epoch: Option<&str>) -> PublishOutcome {
        match self {
            Self::One(position) => Ok(vec![position
                .zip(epoch)
                .map(|(position, epoch)| format_serial(epoch, position))]),
            Self::Many(serials) => Ok(serials
                .iter()
                .map(|s| s.as_deref().map(str::to_owned))
                .collect()),
            Self::Err(e) => Err((**e).clone()),
        }
    }
}

enum Entry {
    Waiting,
    Settled(Settled),
}

/// The msgSerials a connection has published, in ascending order, with their answers.
#[derive(Default)]
pub struct Ledger {
    highest: Option<u64>,
    entries: VecDeque<(u64, Entry)>,
    /// The epoch of the serials kept as positions (the broker has one).
    epoch: Option<Box<str>>,
}

impl Ledger {
    /// Checks a msgSerial against those already processed (§4.6: de-duplicate by
    /// (connectionId, msgSerial), gaps allowed).
    pub fn seen(&self, msg_serial: u64) -> Seen {
        match self.highest {
            Some(highest) if msg_serial <= highest => match self.find(msg_serial) {
                Some(Entry::Waiting) => Seen::Waiting,
                Some(Entry::Settled(settled)) => {
                    Seen::Answered(settled.outcome(self.epoch.as_deref()))
                }
                None => Seen::Forgotten,
            },
            _ => Seen::New,
        }
    }

    /// Records a new msgSerial whose outcome is still to come. msgSerials only grow, so the
    /// entries stay sorted.
    pub fn record(&mut self, msg_serial: u64) {
        self.push(msg_serial, Entry::Waiting);
    }

    /// Records a new msgSerial already answered (a refusal).
    pub fn record_answered(&mut self, msg_serial: u64, outcome: &PublishOutcome) {
        let settled = Settled::of(outcome, &mut self.epoch);
        self.push(msg_serial, Entry::Settled(settled));
    }

    /// Keeps the outcome of `msg_serial`, recorded as waiting.
    pub fn settle(&mut self, msg_serial: u64, outcome: &PublishOutcome) {
        if let Ok(i) = self.position(msg_serial) {
            self.entries[i].1 = Entry::Settled(Settled::of(outcome, &mut self.epoch));
        }
    }

    fn push(&mut self, msg_serial: u64, entry: Entry) {
        if self.highest.is_some_and(|h| msg_serial <= h) {
            return;
        }
        self.highest = Some(msg_serial);
        if self.entries.len() >= LEDGER_SIZE {
            self.entries.pop_front();
        }
        self.entries.push_back((msg_serial, entry));
    }

    fn position(&self, msg_serial: u64) -> Result<usize, usize> {
        self.entries.binary_search_by_key(&msg_serial, |(s, _)| *s)
    }

    fn find(&self, msg_serial: u64) -> Option<&Entry> {
        self.position(msg_serial).ok().map(|i| &self.entries[i].1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(serial: &str) -> PublishOutcome {
        Ok(vec![Some(serial.to_owned())])
    }

    #[test]
    fn serials_come_back_as_they_went_in_whatever_their_shape() {
        let mut ledger = Ledger::default();
        let ours = format_serial("k3x9", 42);
        let outcomes = [
            ok(&ours),
            ok("not-a-serial-of-ours"),
            ok("e-7"),
            Ok(vec![None]),
            Ok(vec![Some(format_serial("k3x9", 1)), None]),
            Ok(vec![]),
        ];
        for (serial, outcome) in outcomes.iter().enumerate() {
            ledger.record_answered(serial as u64, outcome);
        }
        for (serial, outcome) in outcomes.iter().enumerate() {
            match ledger.seen(serial as u64) {
                Seen::Answered(again) => assert_eq!(&again, outcome),
                _ => panic!("msgSerial {serial} is answered from the ledger"),
            }
        }
    }

    #[test]
    fn a_new_msg_serial_is_new_and_a_recorded_one_waits_until_settled() {
        let mut ledger = Ledger::default();
        assert!(matches!(ledger.seen(0), Seen::New));
        ledger.record(0);
        assert!(matches!(ledger.seen(0), Seen::Waiting));
        ledger.settle(0, &ok("e-1"));
        match ledger.seen(0) {
            Seen::Answered(outcome) => assert_eq!(outcome, ok("e-1")),
            _ => panic!("a settled msgSerial is answered from the ledger"),
        }
        assert!(matches!(ledger.seen(1), Seen::New));
    }

    #[test]
    fn gaps_are_allowed_and_a_skipped_msg_serial_is_a_forgotten_one() {
        let mut ledger = Ledger::default();
        ledger.record_answered(3, &ok("e-1"));
        ledger.record_answered(7, &Err(ErrorInfo::new(40160, "no")));
        assert!(matches!(ledger.seen(5), Seen::Forgotten));
        match ledger.seen(7) {
            Seen::Answered(Err(e)) => assert_eq!(e.code, 40160),
            _ => panic!("a refusal is answered again"),
        }
        assert!(matches!(ledger.seen(8), Seen::New));
    }

    #[test]
    fn the_oldest_answers_are_forgotten_but_never_become_new() {
        let mut ledger = Ledger::default();
        for serial in 0..LEDGER_SIZE as u64 + 10 {
            ledger.record_answered(serial, &ok("e-1"));
        }
        assert_eq!(ledger.entries.len(), LEDGER_SIZE);
        assert!(matches!(ledger.seen(0), Seen::Forgotten));
        assert!(matches!(ledger.seen(9), Seen::Forgotten));
        assert!(matches!(ledger.seen(10), Seen::Answered(_)));
    }

    #[test]
    fn a_msg_serial_at_or_below_the_highest_is_not_recorded_again() {
        let mut ledger = Ledger::default();
        ledger.record_answered(4, &ok("e-4"));
        ledger.record_answered(4, &ok("e-other"));
        ledger.record_answered(2, &ok("e-2"));
        assert_eq!(ledger.entries.len(), 1);
        match ledger.seen(4) {
            Seen::Answered(outcome) => assert_eq!(outcome, ok("e-4")),
            _ => panic!("the first answer stays"),
        }
    }
}
