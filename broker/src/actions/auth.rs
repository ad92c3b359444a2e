//! AUTH from the client (§4.7): a new token on a live connection. Verify it, keep the clientId,
//! swap the capability, narrow the modes of channels it still allows, fail the channels it no
//! longer allows (ERROR with channel, 40160), and
//! reply CONNECTED with the same connectionId — ably-js waits for that reply with no timeout.

use protocol::error::codes;
use protocol::{Action, ErrorInfo, Operation, ProtocolMessage};

use super::channel_error;
use crate::auth::{Credential, Identity};
use crate::channel::Command;
use crate::connection::session::Authority;
use crate::connection::state::{Connection, Ending};

pub(super) async fn apply(conn: &mut Connection, message: ProtocolMessage) {
    let Some(token) = message
        .auth
        .map(|a| a.access_token)
        .filter(|t| !t.is_empty())
    else {
        conn.fail(ErrorInfo::new(
            codes::BAD_REQUEST,
            "AUTH without auth.accessToken",
        ));
        return;
    };
    let grant = match conn
        .broker
        .authenticator
        .authenticate(Credential::Token(&token))
        .await
    {
        Ok(grant) => grant,
        Err(e) if e.is_token_error() => {
            // §4.5: DISCONNECTED with a token error makes the client fetch yet another token.
            conn.outbox.close(Some(ProtocolMessage {
                error: Some(e),
                ..ProtocolMessage::new(Action::Disconnected)
            }));
            conn.ending = Some(Ending::Resumable);
            return;
        }
        Err(e) => return conn.fail(e),
    };
    let current = conn.authority.identity.reported.clone();
    let requested = current.as_deref().filter(|c| *c != "*");
    let identity = match Identity::of_grant(&grant, requested) {
        Ok(identity) if identity.reported == current => identity,
        Ok(_) => {
            return conn.fail(ErrorInfo::new(
                codes::INCOMPATIBLE_CREDENTIALS,
                "the new token is for a different clientId",
            ))
        }
        Err(e) => return conn.fail(e),
    };
    conn.authority = Authority {
        identity,
        token: grant.token_stamp(),
        capability: grant.capability,
        expires_at: grant.expires_at,
    };
    conn.plan_renewal();
    conn.session.set_authority(conn.authority.clone());
    conn.end_if_lapsed().await;
    if conn.ending.is_some() {
        return;
    }
    let mut lost = Vec::new();
    let mut narrowed = Vec::new();
    for (channel, modes) in &conn.attached {
        let permitted = conn.authority.capability.operations(channel);
        let metadata = permitted.contains(Operation::ChannelMetadata);
        if permitted.is_empty() {
            lost.push(channel.clone());
        } else if *modes & !permitted.modes() != 0 || !metadata {
            // Without channel-metadata, occupancy events stop too (ably-chat.md §5.7).
            narrowed.push((channel.clone(), *modes & permitted.modes(), metadata));
        }
    }
    for (channel, modes, metadata) in narrowed {
        conn.attached.insert(channel.clone(), modes);
        let command = Command::UpdateModes {
            connection_id: conn.connection_id.clone(),
            socket_id: conn.socket_id,
            modes,
            metadata,
        };
        let _ = conn.broker.channels.send(&channel, command).await;
    }
    for channel in lost {
        let error = ErrorInfo::new(
            codes::CAPABILITY_DENIED,
            format!("the new token no longer permits channel {channel}"),
        );
        channel_error(conn, &channel, error);
    }
    conn.send(&conn.connected_message(None));
}
