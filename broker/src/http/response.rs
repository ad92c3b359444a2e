//! Building REST responses as ably-js reads them (§9.1): the body in the format the client's
//! `Accept` asks for with that exact Content-Type, Ably error bodies with `X-Ably-ErrorCode`
//! and `X-Ably-ErrorMessage`, the `envelope` wrapper for browsers, and CORS with credentials.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Response, StatusCode};
use protocol::codec::encode_value;
use protocol::{ErrorInfo, Format};
use serde::Serialize;

/// The response type of every handler.
pub type HttpResponse = Response<Full<Bytes>>;

/// How the client wants its answer.
#[derive(Clone, Debug)]
pub struct Negotiated {
    /// Body format, from `Accept`.
    pub format: Format,
    /// `envelope=json|msgpack`: wrap status, headers and body in a 200 (browsers, §9.1).
    pub envelope: Option<Format>,
    /// The request's `Origin`, for CORS.
    pub origin: Option<HeaderValue>,
}

impl Negotiated {
    /// Reads `Accept`, `Origin` and the `envelope` query parameter.
    pub fn from_request(headers: &HeaderMap, query: &[(String, String)]) -> Negotiated {
        let accept = headers
            .get(hyper::header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let format = if accept.contains("application/x-msgpack") {
            Format::Msgpack
        } else {
            Format::Json
        };
        let envelope = query
            .iter()
            .find(|(k, _)| k == "envelope")
            .and_then(|(_, v)| Format::parse(v));
        Negotiated {
            format,
            envelope,
            origin: headers.get(hyper::header::ORIGIN).cloned(),
        }
    }

    /// A success response carrying `body`, with extra headers such as `Link`.
    pub fn ok<T: Serialize + ?Sized>(
        &self,
        status: StatusCode,
        body: &T,
        headers: Vec<(HeaderName, String)>,
    ) -> HttpResponse {
        self.respond(status, body, headers)
    }

    /// An Ably error response (§9.1): `{"error":{message,code,statusCode}}` plus headers.
    pub fn error(&self, error: &ErrorInfo) -> HttpResponse {
        let status =
            StatusCode::from_u16(error.status_code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let message: String = error
            .message
            .chars()
            .filter(|c| c.is_ascii_graphic() || *c == ' ')
            .collect();
        let headers = vec![
            (
                HeaderName::from_static("x-ably-errorcode"),
                error.code.to_string(),
            ),
            (HeaderName::from_static("x-ably-errormessage"), message),
        ];
        self.respond(status, &ErrorBody { error }, headers)
    }

    /// Encodes `body` in the negotiated format, or wrapped in an envelope (status, headers
    /// and body inside a 200) when the client asked for one.
    fn respond<T: Serialize + ?Sized>(
        &self,
        status: StatusCode,
        body: &T,
        headers: Vec<(HeaderName, String)>,
    ) -> HttpResponse {
        let Some(format) = self.envelope else {
            return self.finish(
                status,
                self.format,
                encode_value(self.format, body),
                headers,
            );
        };
        let wrapped = Envelope {
            status_code: status.as_u16(),
            response: body,
            headers: headers
                .iter()
                .map(|(name, value)| (name.as_str().to_owned(), value.clone().into()))
                .collect(),
        };
        self.finish(
            StatusCode::OK,
            format,
            encode_value(format, &wrapped),
            headers,
        )
    }

    /// A plain-text response (metrics, health).
    pub fn text(
        &self,
        status: StatusCode,
        content_type: &'static str,
        body: String,
    ) -> HttpResponse {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            HeaderValue::from_static(content_type),
        );
        self.cors(response.headers_mut());
        response
    }

    fn finish(
        &self,
        status: StatusCode,
        format: Format,
        body: Bytes,
        headers: Vec<(HeaderName, String)>,
    ) -> HttpResponse {
        let mut response = Response::new(Full::new(body));
        *response.status_mut() = status;
        let map = response.headers_mut();
        map.insert(
            hyper::header::CONTENT_TYPE,
            HeaderValue::from_static(format.content_type()),
        );
        for (name, value) in headers {
            if let Ok(value) = HeaderValue::from_str(&value) {
                map.append(name, value);
            }
        }
        self.cors(map);
        response
    }

    /// CORS for browsers: authenticated requests use credentials, so echo the Origin rather
    /// than `*` (§9.1).
    pub fn cors(&self, headers: &mut HeaderMap) {
        use hyper::header::*;
        match &self.origin {
            Some(origin) => {
                headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
                headers.insert(
                    ACCESS_CONTROL_ALLOW_CREDENTIALS,
                    HeaderValue::from_static("true"),
                );
                headers.insert(VARY, HeaderValue::from_static("Origin"));
            }
            None => {
                headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
            }
        }
        headers.insert(
            ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("Link, X-Ably-ErrorCode, X-Ably-ErrorMessage"),
        );
    }

    /// The answer to an `OPTIONS` preflight.
    pub fn preflight(&self, requested_headers: Option<&HeaderValue>) -> HttpResponse {
        use hyper::header::*;
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = StatusCode::NO_CONTENT;
        let headers = response.headers_mut();
        self.cors(headers);
        headers.insert(
            ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, PUT, PATCH, DELETE, OPTIONS"),
        );
        headers.insert(
            ACCESS_CONTROL_ALLOW_HEADERS,
            requested_headers
                .cloned()
                .unwrap_or(HeaderValue::from_static(
                "accept, authorization, content-type, x-ably-version, ably-agent, x-ably-clientid",
            )),
        );
        headers.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("86400"));
        response
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Envelope<'a, T: Serialize + ?Sized> {
    status_code: u16,
    response: &'a T,
    headers: serde_json::Map<String, serde_json::Value>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a ErrorInfo,
}
