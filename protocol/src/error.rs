//! [`ErrorInfo`], the error object of every ERROR, NACK, DISCONNECTED and REST error body, and
//! the Ably error codes the broker uses (§11). Every error carries `message`, `code` and
//! `statusCode`: ably-js silently drops a frame whose error lacks one of them (§2).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// An Ably error: a stable numeric code, the HTTP status it maps to, and a human message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorInfo {
    /// What went wrong, for people.
    pub message: String,
    /// The Ably error code (§11).
    pub code: u32,
    /// The HTTP status that goes with the code.
    pub status_code: u16,
    /// A link to the code's documentation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub href: Option<String>,
    /// Machine-readable particulars, as string pairs (ably-js `ErrorInfo.detail`, surfaced as
    /// `errorDetail` by `request()`): why a moderation endpoint rejected a message, for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<BTreeMap<String, String>>,
}

impl ErrorInfo {
    /// An error with `code`, its usual status, and `message`.
    pub fn new(code: u32, message: impl Into<String>) -> Self {
        ErrorInfo {
            message: message.into(),
            code,
            status_code: codes::status_for(code),
            href: Some(format!("https://help.ably.io/error/{code}")),
            detail: None,
        }
    }

    /// This error with `detail` as its particulars (none when `detail` is empty).
    pub fn with_detail(mut self, detail: BTreeMap<String, String>) -> Self {
        self.detail = (!detail.is_empty()).then_some(detail);
        self
    }

    /// True for the token errors 40140–40149, which make clients fetch a new token (§8.5).
    pub fn is_token_error(&self) -> bool {
        (40140..40150).contains(&self.code)
    }
}

impl std::fmt::Display for ErrorInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (code {})", self.message, self.code)
    }
}

impl std::error::Error for ErrorInfo {}

/// The error codes the broker sends, named (§11).
pub mod codes {
    /// Bad request.
    pub const BAD_REQUEST: u32 = 40000;
    /// Invalid parameter value.
    pub const INVALID_PARAMETER: u32 = 40003;
    /// A REST publish names a connectionKey that is no live connection's.
    pub const INVALID_MESSAGE_CONNECTION_KEY: u32 = 40006;
    /// Message too large.
    pub const MESSAGE_TOO_LARGE: u32 = 40009;
    /// Invalid channel name.
    pub const INVALID_CHANNEL_NAME: u32 = 40010;
    /// Invalid or mismatched clientId.
    pub const INVALID_CLIENT_ID: u32 = 40012;
    /// Invalid data or encoding.
    pub const INVALID_DATA: u32 = 40013;
    /// Unauthorized.
    pub const UNAUTHORIZED: u32 = 40100;
    /// Invalid credentials.
    pub const INVALID_CREDENTIALS: u32 = 40101;
    /// Incompatible credentials (clientId mismatch).
    pub const INCOMPATIBLE_CREDENTIALS: u32 = 40102;
    /// Token request timestamp outside the allowed window.
    pub const TIMESTAMP_OUT_OF_WINDOW: u32 = 40104;
    /// Token request nonce replayed.
    pub const NONCE_REPLAYED: u32 = 40105;
    /// No valid authentication method.
    pub const NO_AUTH_METHOD: u32 = 40106;
    /// Token error, unspecified.
    pub const TOKEN_ERROR: u32 = 40140;
    /// Token revoked.
    pub const TOKEN_REVOKED: u32 = 40141;
    /// Token expired.
    pub const TOKEN_EXPIRED: u32 = 40142;
    /// Token unrecognised.
    pub const TOKEN_UNRECOGNISED: u32 = 40143;
    /// Invalid JWT (bad structure or signature).
    pub const INVALID_JWT: u32 = 40144;
    /// Operation not permitted by the capability.
    pub const CAPABILITY_DENIED: u32 = 40160;
    /// An "own" operation (`message-update-own`, `message-delete-own`) by a client that is not
    /// identified, so it cannot be the author.
    pub const UNIDENTIFIED_OWN_OPERATION: u32 = 40166;
    /// Forbidden.
    pub const FORBIDDEN: u32 = 40300;
    /// Not found.
    pub const NOT_FOUND: u32 = 40400;
    /// Method not allowed.
    pub const METHOD_NOT_ALLOWED: u32 = 40500;
    /// A message the moderation endpoint (`[moderation]`) rejected, when it names no code of
    /// its own: "message rejected by moderation" (HTTP 422).
    pub const REJECTED_BY_MODERATION: u32 = 42213;
    /// Rate limit exceeded.
    pub const RATE_LIMITED: u32 = 42910;
    /// Internal error.
    pub const INTERNAL: u32 = 50000;
    /// Internal channel error.
    pub const INTERNAL_CHANNEL: u32 = 50001;
    /// Internal connection error.
    pub const INTERNAL_CONNECTION: u32 = 50002;
    /// Timeout.
    pub const TIMEOUT: u32 = 50003;
    /// Service unavailable (the broker is shutting down).
    pub const UNAVAILABLE: u32 = 50300;
    /// Connection failed.
    pub const CONNECTION_FAILED: u32 = 80000;
    /// Connection disconnected.
    pub const DISCONNECTED: u32 = 80003;
    /// Connection resume or recover failed.
    pub const RESUME_FAILED: u32 = 80008;
    /// Connection closed.
    pub const CONNECTION_CLOSED: u32 = 80017;
    /// Invalid connection key.
    pub const INVALID_CONNECTION_KEY: u32 = 80018;
    /// Channel in an invalid state for the operation.
    pub const CHANNEL_STATE: u32 = 90001;
    /// Channel continuity not guaranteed.
    pub const CONTINUITY_LOST: u32 = 90003;
    /// Presence needs a clientId.
    pub const PRESENCE_NEEDS_CLIENT_ID: u32 = 91000;
    /// The channel has the maximum number of presence members.
    pub const PRESENCE_LIMIT: u32 = 91003;
    /// Message updates, deletes and appends are not enabled on the channel.
    pub const MESSAGE_UPDATES_DISABLED: u32 = 93002;

    /// The HTTP status that usually goes with `code`: the code's first three digits, with the
    /// few exceptions Ably makes.
    pub fn status_for(code: u32) -> u16 {
        match code {
            80016 => 410,
            50003 => 504,
            80000..=99_999 => 400,
            10_000..=59_999 => (code / 100) as u16,
            _ => 500,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_code() {
        assert_eq!(ErrorInfo::new(40160, "x").status_code, 401);
        assert_eq!(ErrorInfo::new(40009, "x").status_code, 400);
        assert_eq!(ErrorInfo::new(80008, "x").status_code, 400);
        assert_eq!(ErrorInfo::new(42910, "x").status_code, 429);
        assert_eq!(ErrorInfo::new(50003, "x").status_code, 504);
        assert!(ErrorInfo::new(40142, "x").is_token_error());
        assert!(!ErrorInfo::new(40160, "x").is_token_error());
    }

    #[test]
    fn serialized_errors_carry_the_three_required_fields() {
        let json = serde_json::to_value(ErrorInfo::new(40009, "too big")).unwrap();
        assert_eq!(json["message"], "too big");
        assert_eq!(json["code"], 40009);
        assert_eq!(json["statusCode"], 400);
        assert!(json.get("detail").is_none(), "no detail, no field");
    }

    #[test]
    fn detail_goes_both_ways_in_json_and_msgpack() {
        let detail = BTreeMap::from([("reason".to_owned(), "spam".to_owned())]);
        let error = ErrorInfo::new(42213, "rejected").with_detail(detail);
        let json = serde_json::to_value(&error).unwrap();
        assert_eq!(json["detail"]["reason"], "spam");
        assert_eq!(serde_json::from_value::<ErrorInfo>(json).unwrap(), error);
        let packed = rmp_serde::to_vec_named(&error).unwrap();
        assert_eq!(rmp_serde::from_slice::<ErrorInfo>(&packed).unwrap(), error);
        assert_eq!(
            ErrorInfo::new(1, "x").with_detail(BTreeMap::new()).detail,
            None
        );
    }
}
