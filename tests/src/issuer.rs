//! A local OIDC issuer standing in for Auth0 (the one thing that cannot exist offline), with
//! the same wire behaviour: RSA keys generated in the test, a JWKS served over real HTTP on
//! 127.0.0.1:0, and RS256 tokens with Auth0's claims. The JWKS endpoint can be told to fail,
//! stall or serve garbage, and counts its hits, so the cache's behaviour can be asserted.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::pkcs8::{EncodePrivateKey, LineEnding};
use rsa::traits::PublicKeyParts;
use rsa::RsaPrivateKey;

/// An RSA signing key with its JWK form.
pub struct SigningKey {
    /// The `kid`.
    pub kid: String,
    /// For signing tokens.
    pub encoding: EncodingKey,
    /// The PEM of the public key, for algorithm-confusion tests.
    pub public_pem: String,
    /// The public JWK.
    pub jwk: serde_json::Value,
}

fn generate(kid: &str, bits: usize) -> SigningKey {
    let private = RsaPrivateKey::new(&mut rand::thread_rng(), bits).expect("RSA key generates");
    let pem = private.to_pkcs8_pem(LineEnding::LF).expect("PEM encodes");
    let public = private.to_public_key();
    let public_pem =
        rsa::pkcs8::EncodePublicKey::to_public_key_pem(&public, LineEnding::LF).expect("PEM");
    let b64 = |n: &rsa::BigUint| URL_SAFE_NO_PAD.encode(n.to_bytes_be());
    SigningKey {
        kid: kid.to_owned(),
        encoding: EncodingKey::from_rsa_pem(pem.as_bytes()).expect("key loads"),
        public_pem,
        jwk: serde_json::json!({
            "kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid,
            "n": b64(public.n()), "e": b64(public.e()),
        }),
    }
}

/// Keys generated once per test binary: two of the tenant's and an attacker's.
pub static KEYS: LazyLock<[SigningKey; 3]> = LazyLock::new(|| {
    [
        generate("k1", 2048),
        generate("k2", 2048),
        generate("k1", 2048),
    ]
});
/// A key too weak to trust (1024 bits).
pub static WEAK: LazyLock<SigningKey> = LazyLock::new(|| generate("weak", 1024));

/// How the JWKS endpoint behaves.
pub enum Behaviour {
    /// Serve this JSON body.
    Body(String),
    /// Answer with this status and no keys.
    Status(u16),
    /// Wait this long before answering with the body.
    Slow(Duration, String),
}

/// The local issuer.
pub struct Issuer {
    /// Where it listens.
    pub addr: SocketAddr,
    behaviour: Arc<Mutex<Behaviour>>,
    hits: Arc<AtomicUsize>,
}

/// The audience of access tokens in these tests.
pub const AUDIENCE: &str = "https://chat-broker";
/// The SPA client id in these tests.
pub const CLIENT_ID: &str = "spa-client-id";

impl Issuer {
    /// Starts serving `keys` as the JWKS.
    pub async fn start(keys: &[&SigningKey]) -> Issuer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let behaviour = Arc::new(Mutex::new(Behaviour::Body(Issuer::jwks(keys))));
        let hits = Arc::new(AtomicUsize::new(0));
        let (b, h) = (behaviour.clone(), hits.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (b, h) = (b.clone(), h.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |_request| {
                        let (b, h) = (b.clone(), h.clone());
                        async move {
                            h.fetch_add(1, Ordering::SeqCst);
                            let (status, body, delay) = match &*b.lock().expect("lock") {
                                Behaviour::Body(body) => (200, body.clone(), None),
                                Behaviour::Status(code) => (*code, "oops".to_owned(), None),
                                Behaviour::Slow(d, body) => (200, body.clone(), Some(*d)),
                            };
                            if let Some(d) = delay {
                                tokio::time::sleep(d).await;
                            }
                            let mut response = Response::new(Full::new(Bytes::from(body)));
                            *response.status_mut() = StatusCode::from_u16(status).expect("status");
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Issuer {
            addr,
            behaviour,
            hits,
        }
    }

    /// A JWKS document holding `keys`.
    pub fn jwks(keys: &[&SigningKey]) -> String {
        serde_json::json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() })
            .to_string()
    }

    /// Changes what the endpoint serves.
    pub fn set(&self, behaviour: Behaviour) {
        *self.behaviour.lock().expect("lock") = behaviour;
    }

    /// Requests served so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// The issuer string tokens carry (`iss`).
    pub fn iss(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Plugin settings pointing at this issuer.
    pub fn config(&self) -> auth_plugin::Auth0Config {
        auth_plugin::Auth0Config {
            domain: "tenant.test".into(),
            client_id: CLIENT_ID.into(),
            redirect_uri: "http://127.0.0.1/auth0-landing".into(),
            audience: AUDIENCE.into(),
            issuer: Some(self.iss()),
            jwks_url: Some(format!("http://{}/.well-known/jwks.json", self.addr)),
            ..Default::default()
        }
    }

    /// Standard claims for `sub`, valid for 10 minutes, with extra claims merged in.
    pub fn claims(&self, sub: &str, extra: serde_json::Value) -> serde_json::Value {
        let now = crate::now_secs();
        let mut claims = serde_json::json!({
            "iss": self.iss(), "sub": sub, "aud": [AUDIENCE, format!("{}userinfo", self.iss())],
            "iat": now, "exp": now + 600, "azp": CLIENT_ID,
        });
        if let (Some(map), serde_json::Value::Object(extra)) = (claims.as_object_mut(), extra) {
            for (k, v) in extra {
                if v.is_null() {
                    map.remove(&k);
                } else {
                    map.insert(k, v);
                }
            }
        }
        claims
    }
}

/// Signs `claims` with `key` (RS256, `kid` from the key).
pub fn sign(key: &SigningKey, claims: &serde_json::Value) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(key.kid.clone());
    jsonwebtoken::encode(&header, claims, &key.encoding).expect("token signs")
}

/// Builds a token from raw header and claims JSON and a raw signature (for forgeries).
pub fn forge(header: &serde_json::Value, claims: &serde_json::Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode(signature)
    )
}
