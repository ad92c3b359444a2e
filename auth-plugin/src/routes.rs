//! The app's auth routes, as plain request/response values the broker's HTTP layer converts:
//! `GET /api/oauth/config` (public values the login page needs), `GET`/`PATCH /api/users/me`,
//! and the admin routes `GET /api/users`, `GET`/`PATCH`/`DELETE /api/users/{id}` and
//! `POST /api/users/{id}/restore` (an API key the broker found to be an admin key, or the
//! `admin:users` permission). Errors are Ably-style bodies: 401 with 40144/40142 for a bad
//! token, 403 with 40160 for a missing permission, 403 with 40300 for a deleted user. Two routes are the broker's:
//! `/api/auth/token` mints broker tokens with its own keys, and `/api/users/{id}/profile`
//! accepts every credential the broker does, so it authenticates the caller itself and then
//! asks [`AuthPlugin::public_profile`].

use bytes::Bytes;
use protocol::error::codes;
use protocol::ErrorInfo;
use serde_json::json;

use crate::users::{PublicProfile, UserError, UserPatch};
use crate::{AuthPlugin, Principal};

/// Most users a page lists.
const MAX_PAGE: usize = 200;

/// A request to one of the plugin's routes.
#[derive(Clone, Debug, Default)]
pub struct ApiRequest {
    /// `GET`, `PATCH`, …
    pub method: String,
    /// The path, e.g. `/api/users/me`.
    pub path: String,
    /// Decoded query parameters.
    pub query: Vec<(String, String)>,
    /// The `Authorization: Bearer` token, if any.
    pub bearer: Option<String>,
    /// The API key the broker authenticated the caller with, if any: whether it is an admin
    /// key is the broker's decision (its capability), not the plugin's.
    pub api_key: ApiKey,
    /// The body.
    pub body: Bytes,
}

/// What API key a request came with (`Authorization: Basic`), as the broker judged it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ApiKey {
    /// No API key.
    #[default]
    None,
    /// A valid key that is not an admin credential.
    Restricted,
    /// A valid key whose capability makes it an admin credential.
    Admin,
}

/// The answer: a status and a JSON body.
#[derive(Clone, Debug)]
pub struct ApiResponse {
    /// HTTP status.
    pub status: u16,
    /// JSON body.
    pub body: serde_json::Value,
    /// A user who was just deleted (banned): the broker closes their live connections and
    /// revokes the tokens it issued them.
    pub disconnect: Option<String>,
}

impl ApiResponse {
    fn ok(body: serde_json::Value) -> ApiResponse {
        ApiResponse {
            status: 200,
            body,
            disconnect: None,
        }
    }

    /// An Ably-style error response.
    pub fn error(error: ErrorInfo) -> ApiResponse {
        ApiResponse {
            status: error.status_code,
            body: json!({ "error": error }),
            disconnect: None,
        }
    }
}

fn forbidden(what: &str) -> ErrorInfo {
    ErrorInfo {
        status_code: 403,
        ..ErrorInfo::new(
            codes::CAPABILITY_DENIED,
            format!("{what} needs the admin:users permission or an admin API key"),
        )
    }
}

fn user_error(e: UserError) -> ErrorInfo {
    match e {
        UserError::NotFound => ErrorInfo::new(codes::NOT_FOUND, "no such user"),
        UserError::UsernameTaken(_) => ErrorInfo {
            status_code: 409,
            ..ErrorInfo::new(codes::BAD_REQUEST, e.to_string())
        },
        UserError::Invalid(why) => ErrorInfo::new(codes::INVALID_PARAMETER, why),
        UserError::Banned => ErrorInfo::new(codes::FORBIDDEN, "the user was deleted"),
        UserError::Store(why) => {
            tracing::error!(error = %why, "user store");
            ErrorInfo::new(codes::INTERNAL, "user store unavailable")
        }
    }
}

impl AuthPlugin {
    /// Serves a plugin route; `None` when `request` is for no route of the plugin.
    pub async fn handle(&self, request: ApiRequest) -> Option<ApiResponse> {
        let path = request.path.trim_end_matches('/').to_owned();
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let result = match (request.method.as_str(), segments.as_slice()) {
            ("GET", ["api", "oauth", "config"]) => Ok(ApiResponse::ok(self.oauth_config())),
            (method, ["api", "users", "me"]) => self.me(method, &request).await,
            ("GET", ["api", "users"]) => self.list(&request).await,
            (method, ["api", "users", id]) => self.admin_user(method, id, &request).await,
            ("POST", ["api", "users", id, "restore"]) => self.restore(id, &request).await,
            _ => return None,
        };
        Some(result.unwrap_or_else(ApiResponse::error))
    }

    /// The public values the login page needs, under the key spellings of both Auth0 SDK
    /// generations (`../shared/auth0.md` §1.1). Never a secret.
    pub fn oauth_config(&self) -> serde_json::Value {
        let c = &self.config;
        json!({
            "domain": c.domain,
            "clientID": c.client_id,
            "client_id": c.client_id,
            "clientId": c.client_id,
            "redirect_uri": c.redirect_uri,
            "audience": c.audience,
        })
    }

    /// The public profile of user `id`, for a caller the broker has already authenticated
    /// (any credential: an API key, a broker token, an Auth0 token). 404 (40400) for an id
    /// that is no user.
    pub async fn public_profile(&self, id: &str) -> Result<PublicProfile, ErrorInfo> {
        let user = self.users.get(id).await.map_err(user_error)?;
        user.map(|u| u.public_profile())
            .ok_or_else(|| user_error(UserError::NotFound))
    }

    async fn caller(&self, request: &ApiRequest) -> Result<Principal, ErrorInfo> {
        let token = request
            .bearer
            .as_deref()
            .ok_or_else(|| ErrorInfo::new(codes::UNAUTHORIZED, "a Bearer token is required"))?;
        self.authenticate(token).await
    }

    async fn me(&self, method: &str, request: &ApiRequest) -> Result<ApiResponse, ErrorInfo> {
        let principal = self.caller(request).await?;
        match method {
            "GET" => {
                let user = self
                    .users
                    .get(&principal.client_id)
                    .await
                    .map_err(user_error)?;
                let user = user.ok_or_else(|| user_error(UserError::NotFound))?;
                Ok(ApiResponse::ok(json!(user)))
            }
            "PATCH" => {
                let patch: UserPatch = serde_json::from_slice(&request.body).map_err(|e| {
                    ErrorInfo::new(codes::BAD_REQUEST, format!("invalid body: {e}"))
                })?;
                let user = self
                    .users
                    .update(&principal.client_id, &patch, true)
                    .await
                    .map_err(user_error)?;
                Ok(ApiResponse::ok(json!(user)))
            }
            _ => Err(ErrorInfo::new(
                codes::METHOD_NOT_ALLOWED,
                "method not allowed",
            )),
        }
    }

    async fn require_admin(&self, request: &ApiRequest, what: &str) -> Result<(), ErrorInfo> {
        match request.api_key {
            ApiKey::Admin => return Ok(()),
            ApiKey::Restricted => return Err(forbidden(what)),
            ApiKey::None => {}
        }
        if self.caller(request).await?.admin {
            Ok(())
        } else {
            Err(forbidden(what))
        }
    }

    async fn restore(&self, id: &str, request: &ApiRequest) -> Result<ApiResponse, ErrorInfo> {
        self.require_admin(request, "restoring users").await?;
        let user = self.users.restore(id).await.map_err(|e| match e {
            UserError::NotFound => ErrorInfo::new(codes::NOT_FOUND, "no such deleted user"),
            other => user_error(other),
        })?;
        Ok(ApiResponse::ok(json!(user)))
    }

    async fn list(&self, request: &ApiRequest) -> Result<ApiResponse, ErrorInfo> {
        self.require_admin(request, "listing users").await?;
        let get = |name: &str| {
            request
                .query
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let limit = get("limit")
            .and_then(|l| l.parse().ok())
            .unwrap_or(50)
            .clamp(1, MAX_PAGE);
        let users = self
            .users
            .list(get("query"), get("cursor"), limit + 1)
            .await
            .map_err(user_error)?;
        let next = (users.len() > limit).then(|| users[limit - 1].id.clone());
        let page: Vec<_> = users.into_iter().take(limit).collect();
        Ok(ApiResponse::ok(
            json!({ "users": page, "nextCursor": next }),
        ))
    }

    async fn admin_user(
        &self,
        method: &str,
        id: &str,
        request: &ApiRequest,
    ) -> Result<ApiResponse, ErrorInfo> {
        self.require_admin(request, "managing users").await?;
        match method {
            "GET" => {
                let user = self.users.get(id).await.map_err(user_error)?;
                Ok(ApiResponse::ok(json!(
                    user.ok_or_else(|| user_error(UserError::NotFound))?
                )))
            }
            "PATCH" => {
                let patch: UserPatch = serde_json::from_slice(&request.body).map_err(|e| {
                    ErrorInfo::new(codes::BAD_REQUEST, format!("invalid body: {e}"))
                })?;
                let user = self
                    .users
                    .update(id, &patch, true)
                    .await
                    .map_err(user_error)?;
                Ok(ApiResponse::ok(json!(user)))
            }
            "DELETE" => {
                if !self.users.delete(id).await.map_err(user_error)? {
                    return Err(user_error(UserError::NotFound));
                }
                self.forget_user(id);
                Ok(ApiResponse {
                    status: 200,
                    body: json!({ "deleted": id }),
                    disconnect: Some(id.to_owned()),
                })
            }
            _ => Err(ErrorInfo::new(
                codes::METHOD_NOT_ALLOWED,
                "method not allowed",
            )),
        }
    }
}
