//! Auth0 token verification (`auth/verify`): `cold` is a full RS256 verification through
//! jsonwebtoken, as for a token never seen before; `warm` is the auth plugin answering a token it
//! verified recently (what a reconnect storm costs). The issuer is local: keys generated here,
//! JWKS served on 127.0.0.1.

use criterion::{criterion_main, Criterion};
use jsonwebtoken::{decode, Algorithm, DecodingKey, Validation};
use tests::issuer::{sign, Issuer, AUDIENCE, KEYS};

fn verify(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let issuer = runtime.block_on(Issuer::start(&[&KEYS[0]]));
    let token = sign(
        &KEYS[0],
        &issuer.claims(
            "auth0|bench",
            serde_json::json!({"permissions": ["subscribe:*"]}),
        ),
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let db = sled::open(dir.path()).expect("sled");
    let plugin = runtime.block_on(async {
        let plugin = auth_plugin::AuthPlugin::start(issuer.config(), &db).expect("plugin starts");
        plugin.authenticate(&token).await.expect("token verifies");
        plugin
    });
    let jwk = &KEYS[0].jwk;
    let key = DecodingKey::from_rsa_components(
        jwk["n"].as_str().expect("n"),
        jwk["e"].as_str().expect("e"),
    )
    .expect("key");
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[AUDIENCE]);
    validation.set_issuer(&[issuer.iss()]);

    let mut group = c.benchmark_group("auth/verify");
    group.throughput(criterion::Throughput::Elements(1));
    group.bench_function("cold", |b| {
        b.iter(|| decode::<serde_json::Value>(&token, &key, &validation).expect("verifies"))
    });
    group.bench_function("warm", |b| {
        b.to_async(&runtime)
            .iter(|| async { plugin.authenticate(&token).await.expect("verifies") })
    });
    group.finish();
}

mod entry {
    //! Criterion's generated entry points.
    #![allow(missing_docs)]
    use super::verify;
    criterion::criterion_group!(benches, verify);
}

criterion_main!(entry::benches);
