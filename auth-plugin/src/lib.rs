//! Auth0 / OIDC login for the broker: JWT verification against a JWKS, the user table and the
//! app's auth routes. Not yet implemented; the broker runs on API keys and Ably tokens alone.
//! It will stay a leaf crate that does not depend on `broker` (see `../shared/style.md`).
