//! The Rust side of the ably-js interop test (`tests/ably-js/test/11-rust-sdk-interop.test.js`):
//! a mirror that shows payloads cross between the two SDKs intact, in both wire formats.
//!
//! ```sh
//! interop --endpoint http://127.0.0.1:8080 --key name:secret --format msgpack --in IN --out OUT
//! interop --endpoint http://127.0.0.1:8080 --key name:secret --format json --out OUT \
//!     --publish-binary 00ff80
//! ```
//!
//! Mirror mode subscribes to channel IN, prints exactly `ready` on stdout once attached, then
//! republishes every message it receives on channel OUT with the same name and data: text
//! stays text, bytes stay bytes, a JSON object or array stays JSON. It runs until Ctrl-C
//! (SIGINT), then closes the connection and exits with 0. With `--publish-binary HEX` it
//! instead publishes one binary message named `binary` on OUT, prints `published` once the
//! broker has acknowledged it, and exits. Errors go to stderr with a non-zero exit code.

use std::io::Write;

use clap::Parser;
use client_sdk::{Client, Data, Format, Message, Payload};
use futures_util::StreamExt;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Republishes every message of one channel on another, or publishes one binary message.
#[derive(Parser)]
struct Args {
    /// The broker's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    endpoint: String,
    /// An API key `name:secret`.
    #[arg(long)]
    key: String,
    /// The wire format: json or msgpack.
    #[arg(long, default_value = "msgpack", value_parser = parse_format)]
    format: Format,
    /// The channel to mirror (required unless --publish-binary).
    #[arg(long = "in", required_unless_present = "publish_binary")]
    input: Option<String>,
    /// The channel to publish on.
    #[arg(long = "out")]
    output: String,
    /// Publish these bytes (hex) on OUT, wait for the ACK and exit.
    #[arg(long, value_name = "HEX")]
    publish_binary: Option<String>,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let client = Client::builder(&args.endpoint)
        .key(&args.key)
        .format(args.format)
        .connect()
        .await?;
    let output = client.channel(&args.output);

    if let Some(hex) = &args.publish_binary {
        output.publish("binary", parse_hex(hex)?).await?;
        println!("published");
        client.close().await;
        return Ok(());
    }

    let input = client.channel(args.input.as_deref().unwrap_or_default());
    let mut messages = input.subscribe();
    input.attach().await?;
    println!("ready");
    std::io::stdout().flush()?;

    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        tokio::select! {
            _ = &mut interrupted => break,
            message = messages.next() => {
                let Some(message) = message else {
                    return Err("the connection ended".into());
                };
                let name = message.name.clone();
                output.publish_messages(vec![mirror(message)]).await?;
                eprintln!("republished {name:?}");
            }
        }
    }
    client.close().await;
    Ok(())
}

/// A copy of a received message to publish again: same name, same data. Decoded data is
/// encoded again the way the SDK publishes it; data still carrying an encoding step the SDK
/// does not decode (e.g. a cipher) is passed on as it came.
fn mirror(message: Message) -> Message {
    let (data, encoding) = match message.encoding {
        Some(encoding) => (message.data, Some(encoding)),
        None => match message.data {
            None => Payload::None,
            Some(Data::String(text)) => Payload::Text(text),
            Some(Data::Binary(bytes)) => Payload::Binary(bytes),
            Some(Data::Json(value)) => Payload::Json(value),
        }
        .into_wire(),
    };
    Message {
        name: message.name,
        data,
        encoding,
        ..Default::default()
    }
}

fn parse_format(value: &str) -> std::result::Result<Format, String> {
    match value {
        "json" => Ok(Format::Json),
        "msgpack" => Ok(Format::Msgpack),
        _ => Err("expected json or msgpack".to_owned()),
    }
}

fn parse_hex(hex: &str) -> Result<Vec<u8>> {
    hex.as_bytes()
        .chunks(2)
        .map(|pair| {
            if pair.len() != 2 || !pair.iter().all(u8::is_ascii_hexdigit) {
                return Err("--publish-binary takes pairs of hex digits".into());
            }
            Ok(u8::from_str_radix(std::str::from_utf8(pair)?, 16)?)
        })
        .collect()
}
