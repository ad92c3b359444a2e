//! The wire contract of Ably's realtime protocol v6, shared by the broker, the client SDK, the
//! load generator and the tests: [`ProtocolMessage`] and its parts, action numbers and flags,
//! error codes, capabilities, the user claims of tokens, and the JSON and msgpack codecs. It knows nothing of sockets,
//! storage or runtimes. Section numbers (§) refer to `../shared/ably-protocol.md`.

pub mod action;
pub mod capability;
pub mod codec;
pub mod error;
pub mod flags;
pub mod message;
pub mod user_claims;

pub use action::{Action, PresenceAction};
pub use capability::{Capability, Operation};
pub use codec::{decode, encode, salvage, DecodeError, Format, Salvage};
pub use error::ErrorInfo;
pub use message::{
    Annotation, AuthDetails, ConnectionDetails, Data, Message, MessageVersion, PresenceMessage,
    ProtocolMessage, PublishResult,
};
pub use user_claims::UserClaims;
