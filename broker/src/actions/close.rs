//! CLOSE: the client ends the connection for good (§4.5). Reply CLOSED after everything already
//! queued, close the socket, and forget the connection (no resume).

use protocol::{Action, ProtocolMessage};

use crate::connection::state::{Connection, Ending};

pub(super) fn apply(conn: &mut Connection) {
    conn.outbox
        .finish_with(&ProtocolMessage::new(Action::Closed));
    conn.ending = Some(Ending::Closed);
}
