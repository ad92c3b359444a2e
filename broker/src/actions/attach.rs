//! ATTACH (§5.1–5.6): check the name and capability, grant the requested modes the capability
//! permits (§8.8; without a request, its default ones) and confirm them in ATTACHED's `modes`
//! param, work out where delivery starts — after the client's `channelSerial` on a re-attach,
//! or a rewind on a first attach — and hand the rest to the channel's sequencer, which sends
//! ATTACHED before any MESSAGE (§5.5).

use std::collections::BTreeMap;

use protocol::error::codes;
use protocol::{flags, ErrorInfo, Operation, ProtocolMessage};

use super::channel_error;
use crate::channel::{validate_name, Attach, Command, StartFrom, Subscriber};
use crate::connection::state::Connection;

pub(super) async fn apply(conn: &mut Connection, message: ProtocolMessage) {
    let Some(channel) = message.channel.clone() else {
        conn.fail(ErrorInfo::new(
            codes::BAD_REQUEST,
            "ATTACH without a channel",
        ));
        return;
    };
    let limits = &conn.broker.config.limits;
    if let Err(e) = validate_name(&channel, limits.max_channel_name_length) {
        return channel_error(conn, &channel, e);
    }
    let operations = conn.authority.capability.operations(&channel);
    if operations.is_empty() {
        return channel_error(
            conn,
            &channel,
            ErrorInfo::new(
                codes::CAPABILITY_DENIED,
                format!("Channel denied access based on given capability: {channel}"),
            ),
        );
    }
    if !conn.attached.contains_key(&channel)
        && conn.attached.len() >= limits.max_channels_per_connection
    {
        let max = limits.max_channels_per_connection;
        return channel_error(
            conn,
            &channel,
            ErrorInfo::new(
                codes::BAD_REQUEST,
                format!("a connection may attach at most {max} channels"),
            ),
        );
    }
    let requested = message.flags.unwrap_or(0) & flags::MODE_ALL;
    let modes = if requested == 0 {
        operations.default_modes()
    } else {
        requested & operations.modes()
    };

    let params = message.params.unwrap_or_default();
    let mut accepted = BTreeMap::new();
    let mut echo = conn.session.echo;
    if let Some(value) = params.get("echo") {
        echo &= value != "false";
        accepted.insert("echo".to_owned(), value.clone());
    }
    // ably-chat.md §5.7: `metrics` or `metrics.<category>` (served as `metrics`) asks for
    // occupancy events, which only a capability with channel-metadata gets; without it the
    // param is ignored.
    let occupancy = params
        .get("occupancy")
        .filter(|v| *v == "metrics" || v.starts_with("metrics."))
        .filter(|_| operations.contains(Operation::ChannelMetadata))
        .cloned();
    if let Some(value) = &occupancy {
        accepted.insert("occupancy".to_owned(), value.clone());
    }
    let from = match (
        message.channel_serial.filter(|s| !s.is_empty()),
        params.get("rewind"),
    ) {
        (Some(serial), _) => StartFrom::Serial(serial),
        (None, Some(rewind)) => match parse_rewind(rewind) {
            Ok(from) => {
                accepted.insert("rewind".to_owned(), rewind.clone());
                from
            }
            Err(e) => return channel_error(conn, &channel, e),
        },
        (None, None) => StartFrom::Live,
    };
    // ably-js exposes ATTACHED's params as `channel.params`: the granted modes are one of them.
    accepted.insert("modes".to_owned(), mode_names(modes));
    let subscriber = Subscriber {
        connection_id: conn.connection_id.clone(),
        socket_id: conn.socket_id,
        outbox: conn.outbox.clone(),
        modes,
        echo,
        occupancy: occupancy.is_some(),
        last_client_sync: None,
    };
    if conn.attached.insert(channel.clone(), modes).is_none() {
        conn.broker.metrics.attached_channels.inc();
    }
    let command = Command::Attach(Attach {
        subscriber,
        from,
        params: accepted,
    });
    if let Err(e) = conn.broker.channels.send(&channel, command).await {
        channel_error(conn, &channel, e);
    }
}

/// The granted modes as ATTACHED's `modes` param: their lowercase names, comma-separated, in
/// the order of their flags (§8.8), e.g. `presence,publish,subscribe,presence_subscribe`.
fn mode_names(modes: u64) -> String {
    [
        (flags::MODE_PRESENCE, "presence"),
        (flags::MODE_PUBLISH, "publish"),
        (flags::MODE_SUBSCRIBE, "subscribe"),
        (flags::MODE_PRESENCE_SUBSCRIBE, "presence_subscribe"),
        (flags::MODE_ANNOTATION_PUBLISH, "annotation_publish"),
        (flags::MODE_ANNOTATION_SUBSCRIBE, "annotation_subscribe"),
        (flags::MODE_OBJECT_SUBSCRIBE, "object_subscribe"),
        (flags::MODE_OBJECT_PUBLISH, "object_publish"),
    ]
    .iter()
    .filter(|(flag, _)| modes & flag != 0)
    .map(|(_, name)| *name)
    .collect::<Vec<_>>()
    .join(",")
}

/// `rewind` is a count (`10`) or a duration (`30s`, `2m`, `1h`) (§5.4).
fn parse_rewind(value: &str) -> Result<StartFrom, ErrorInfo> {
    let invalid = || {
        ErrorInfo::new(
            codes::INVALID_PARAMETER,
            format!(
                "invalid rewind {value:?}: use a message count or a duration such as 30s or 2m"
            ),
        )
    };
    if let Ok(count) = value.parse::<usize>() {
        return Ok(StartFrom::Rewind(count));
    }
    let (number, unit_ms) = match value.char_indices().last() {
        Some((i, 's')) => (&value[..i], 1_000),
        Some((i, 'm')) => (&value[..i], 60_000),
        Some((i, 'h')) => (&value[..i], 3_600_000),
        _ => return Err(invalid()),
    };
    let amount: i64 = number.parse().map_err(|_| invalid())?;
    if amount < 0 {
        return Err(invalid());
    }
    Ok(StartFrom::RewindFor(amount.saturating_mul(unit_ms)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_are_named_as_ably_js_names_them() {
        assert_eq!(
            mode_names(flags::MODE_SUBSCRIBE | flags::MODE_PUBLISH),
            "publish,subscribe"
        );
        assert_eq!(mode_names(flags::MODE_SUBSCRIBE), "subscribe");
        assert_eq!(mode_names(0), "");
    }

    #[test]
    fn rewind_takes_counts_and_durations() {
        assert_eq!(parse_rewind("10").unwrap(), StartFrom::Rewind(10));
        assert_eq!(parse_rewind("30s").unwrap(), StartFrom::RewindFor(30_000));
        assert_eq!(parse_rewind("2m").unwrap(), StartFrom::RewindFor(120_000));
        for bad in ["", "x", "-1s", "10d", "1.5m"] {
            assert_eq!(parse_rewind(bad).unwrap_err().code, 40003, "{bad}");
        }
    }
}
