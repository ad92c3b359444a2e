//! A terminal chat that mirrors our users' web chat: pick a username, list the channels, read
//! and send messages, see who is online.
//!
//! Start a broker; on first start it prints a development key (and stores it in
//! `data/dev-api-key`):
//!
//! ```sh
//! cargo run --release -p broker
//! # development API key (stored in data/dev-api-key): dev.AbC123:…
//! cargo run --release -p client-sdk --example terminal_chat -- \
//!     --key "$(cat data/dev-api-key)" --username alice
//! ```
//!
//! Options (each also an environment variable): `--endpoint` (`CHAT_ENDPOINT`, default
//! `http://127.0.0.1:8080`); `--key name:secret` (`CHAT_KEY`, the username becomes the
//! clientId) or `--token` (`CHAT_TOKEN`, the token's clientId is the username); `--username`
//! (`CHAT_USERNAME`, asked for on stdin when missing); `--channels a,b,c` (`CHAT_CHANNELS`,
//! default `chat:general,chat:random`; the first is joined at start).
//!
//! Input is read line by line, so it works typed or piped. A plain line is sent to the current
//! channel; `/channels` lists the channels (`*` marks the current one); `/join NAME` switches
//! (leaves the current channel, attaches the new one, enters presence and shows its last 20
//! messages); `/who` lists who is online; `/quit` (or end of input) leaves and closes. Incoming
//! messages print as `[channel] username: text`, presence as `* name joined` / `* name left`.

use std::collections::HashSet;
use std::time::Duration;

use clap::Parser;
use client_sdk::{
    Channel, Client, Data, HistoryQuery, Message, PresenceAction, PresenceMessage, Subscription,
};
use futures_util::StreamExt;
use tokio::sync::mpsc;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// A terminal chat on the broker.
#[derive(Parser)]
struct Args {
    /// The broker's base URL.
    #[arg(long, env = "CHAT_ENDPOINT", default_value = "http://127.0.0.1:8080")]
    endpoint: String,
    /// An API key `name:secret`; the username becomes the clientId.
    #[arg(
        long,
        env = "CHAT_KEY",
        required_unless_present = "token",
        conflicts_with = "token"
    )]
    key: Option<String>,
    /// A token (Ably JWT, broker or Auth0 token) carrying the clientId.
    #[arg(long, env = "CHAT_TOKEN")]
    token: Option<String>,
    /// Your name in the chat; asked for when missing.
    #[arg(long, env = "CHAT_USERNAME")]
    username: Option<String>,
    /// The channels to choose from; the first is joined at start.
    #[arg(
        long,
        env = "CHAT_CHANNELS",
        value_delimiter = ',',
        default_value = "chat:general,chat:random"
    )]
    channels: Vec<String>,
}

/// The channel being shown: its handle, its streams, and the ids already printed from history.
struct Room {
    channel: Channel,
    messages: Subscription<Message>,
    presence: Subscription<PresenceMessage>,
    shown: HashSet<String>,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let mut input = stdin_lines();
    let builder = Client::builder(&args.endpoint);
    let (builder, name) = match (&args.token, &args.key) {
        (Some(token), _) => (builder.token(token), args.username.clone()),
        (None, key) => {
            let name = match args.username.clone() {
                Some(name) => name,
                None => ask_username(&mut input).await?,
            };
            let key = key.as_deref().unwrap_or_default(); // clap requires --key or --token
            (builder.key(key).client_id(&name), Some(name))
        }
    };
    // The SDK keeps retrying an unreachable broker; give up after a while.
    let client = tokio::time::timeout(Duration::from_secs(15), builder.connect())
        .await
        .map_err(|_| format!("no answer from {} within 15 s", args.endpoint))??;
    // With a token, the username is the token's clientId.
    let username = match client.client_id().or(name) {
        Some(name) => name,
        None => ask_username(&mut input).await?,
    };
    let mut channels = args.channels.clone();
    let first = channels.first().cloned().ok_or("--channels is empty")?;
    let mut room = join(&client, &first, &username).await?;

    loop {
        tokio::select! {
            line = input.recv() => {
                // End of input counts as /quit.
                let Some(line) = line else { break };
                if !command(line.trim(), &client, &username, &mut channels, &mut room).await {
                    break;
                }
            }
            message = room.messages.next() => {
                let Some(message) = message else {
                    eprintln!("! the connection has ended");
                    break;
                };
                // Messages published between the attach and the history read arrive twice.
                if !message.id.as_ref().is_some_and(|id| room.shown.remove(id)) {
                    print_message(room.channel.name(), &message);
                }
            }
            Some(event) = room.presence.next() => {
                let name = event.client_id.as_deref().unwrap_or("someone");
                match event.action {
                    PresenceAction::Enter => println!("* {name} joined"),
                    PresenceAction::Leave => println!("* {name} left"),
                    _ => {}
                }
            }
        }
    }
    leave(room).await;
    client.close().await;
    println!("bye");
    Ok(())
}

/// Runs one line of input; false for /quit.
async fn command(
    line: &str,
    client: &Client,
    username: &str,
    channels: &mut Vec<String>,
    room: &mut Room,
) -> bool {
    let (command, argument) = line.split_once(' ').unwrap_or((line, ""));
    let (argument, current) = (argument.trim(), room.channel.name());
    match command {
        "" => {}
        "/quit" => return false,
        "/channels" => {
            for name in channels.iter() {
                println!("{} {name}", if name == current { '*' } else { ' ' });
            }
        }
        "/who" => match room.channel.presence().get().await {
            Ok(members) => {
                let mut names: Vec<String> =
                    members.into_iter().filter_map(|m| m.client_id).collect();
                names.sort();
                names.dedup();
                println!("online in {current}: {}", names.join(", "));
            }
            Err(e) => eprintln!("! cannot list members: {e}"),
        },
        "/join" if argument.is_empty() => println!("usage: /join NAME"),
        "/join" if argument == current => println!("already in {current}"),
        "/join" => match join(client, argument, username).await {
            Ok(new) => {
                leave(std::mem::replace(room, new)).await;
                if !channels.iter().any(|c| c == argument) {
                    channels.push(argument.to_owned());
                }
            }
            Err(e) => eprintln!("! cannot join {argument}: {e}"),
        },
        _ if command.starts_with('/') => {
            println!("commands: /channels, /join NAME, /who, /quit; any other line is sent");
        }
        _ => {
            if let Err(e) = room.channel.publish("message", line).await {
                eprintln!("! not sent: {e}");
            }
        }
    }
    true
}

/// Attaches `name`, enters presence as `username` and prints the last 20 messages, oldest first.
async fn join(client: &Client, name: &str, username: &str) -> Result<Room> {
    let channel = client.channel(name);
    // Subscribe before attaching so nothing published after the attach is missed.
    let messages = channel.subscribe();
    let presence = channel.presence().subscribe();
    channel.attach().await?;
    if let Err(e) = channel.presence().enter(username).await {
        let _ = channel.detach().await;
        return Err(e.into());
    }
    let query = HistoryQuery {
        limit: Some(20),
        ..Default::default()
    };
    let history = channel.history(query).await?; // newest first
    println!("-- {name}: last {} messages --", history.items.len());
    let mut shown = HashSet::new();
    for message in history.items.iter().rev() {
        print_message(name, message);
        shown.extend(message.id.clone());
    }
    println!("-- joined {name} as {username} (/channels, /join NAME, /who, /quit) --");
    Ok(Room {
        channel,
        messages,
        presence,
        shown,
    })
}

/// Leaves presence and detaches; the room's streams end when it is dropped.
async fn leave(room: Room) {
    let _ = room.channel.presence().leave(()).await;
    let _ = room.channel.detach().await;
}

fn print_message(channel: &str, message: &Message) {
    let text = match &message.data {
        Some(Data::String(text)) => text.clone(),
        Some(Data::Json(value)) => value.to_string(),
        Some(Data::Binary(bytes)) => format!("<{} bytes>", bytes.len()),
        None => String::new(),
    };
    let from = message.client_id.as_deref().unwrap_or("anonymous");
    println!("[{channel}] {from}: {text}");
}

async fn ask_username(input: &mut mpsc::UnboundedReceiver<String>) -> Result<String> {
    eprint!("username: "); // on stderr (unbuffered), so that stdout is the chat alone
    match input.recv().await {
        Some(line) if !line.trim().is_empty() => Ok(line.trim().to_owned()),
        _ => Err("no username given".into()),
    }
}

/// Stdin lines from a plain thread: a blocked read there cannot hold up the exit, as one
/// on tokio's blocking pool would.
fn stdin_lines() -> mpsc::UnboundedReceiver<String> {
    let (sender, receiver) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    receiver
}
