//! The user table, in five [`Table`]s: `users` (id → user), `subs` (every linked `sub` → id)
//! and `usernames` (normalised username → id), and the ban tombstones. Uniqueness of `sub` and
//! username is enforced by compare-and-swap on those index tables, so two concurrent first
//! logins of one person create one user, and a username is never given out twice, whether
//! the tables are one broker's sled trees (`auth-users`, `auth-subs`…) or a cluster's shared
//! KV bucket. Profile fields follow the IdP on each login unless the user edited them
//! (`edited`). Deleting a user bans them: tombstones in `banned` (id → the user as they were)
//! and `banned-subs` (each of their `sub`s → id) refuse their logins until a restore.

use std::sync::Arc;

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::table::{OpenTable, SledTable, Table};

/// One user.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    /// Internal, stable id; the user's clientId on the broker.
    pub id: String,
    /// Unique, normalised (`[a-z0-9._-]{3,32}`).
    pub username: String,
    /// The `sub` of the first login.
    pub oauth_sub: String,
    /// Every `sub` linked to this user, the first one included.
    #[serde(default)]
    pub identities: Vec<String>,
    /// Given name.
    #[serde(default)]
    pub first_name: Option<String>,
    /// Family name.
    #[serde(default)]
    pub last_name: Option<String>,
    /// Avatar URL.
    #[serde(default)]
    pub profile_img_url: Option<String>,
    /// Creation time, ms since the epoch.
    pub created_at: i64,
    /// Last verified login, ms since the epoch.
    pub last_login_at: i64,
    /// Fields the user edited (`firstName`, `lastName`, `profileImgUrl`): logins no longer
    /// overwrite them.
    #[serde(default)]
    pub edited: Vec<String>,
}

/// What anyone signed in may read about a user (`GET /api/users/{id}/profile`): how to show
/// them in a chat. Never the `sub`, identities or login times.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PublicProfile {
    /// The user's id: their clientId on the broker.
    pub id: String,
    /// Their username.
    pub username: String,
    /// Given name, if known.
    pub first_name: Option<String>,
    /// Family name, if known.
    pub last_name: Option<String>,
    /// Avatar URL, if known.
    pub profile_img_url: Option<String>,
}

impl User {
    /// The part of the user that other users may see.
    pub fn public_profile(&self) -> PublicProfile {
        PublicProfile {
            id: self.id.clone(),
            username: self.username.clone(),
            first_name: self.first_name.clone(),
            last_name: self.last_name.clone(),
            profile_img_url: self.profile_img_url.clone(),
        }
    }
}

/// Profile claims of a verified token.
#[derive(Clone, Debug, Default)]
pub struct Profile {
    /// `given_name`.
    pub given_name: Option<String>,
    /// `family_name`.
    pub family_name: Option<String>,
    /// `nickname`.
    pub nickname: Option<String>,
    /// `picture`.
    pub picture: Option<String>,
    /// `email` (only used to suggest a username).
    pub email: Option<String>,
}

/// Changes to a user, from the user themself or an admin.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UserPatch {
    /// New username (normalised, must be free).
    pub username: Option<String>,
    /// New given name.
    pub first_name: Option<String>,
    /// New family name.
    pub last_name: Option<String>,
    /// New avatar URL.
    pub profile_img_url: Option<String>,
}

/// Why a user operation failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UserError {
    /// No such user.
    #[error("no such user")]
    NotFound,
    /// The username belongs to someone else.
    #[error("username {0:?} is taken")]
    UsernameTaken(String),
    /// The value is not acceptable.
    #[error("{0}")]
    Invalid(String),
    /// The user was deleted: their logins are refused until an admin restores them.
    #[error("the user was deleted")]
    Banned,
    /// The store failed.
    #[error("user store: {0}")]
    Store(String),
}

impl From<sled::Error> for UserError {
    fn from(e: sled::Error) -> Self {
        UserError::Store(e.to_string())
    }
}

/// Usernames nobody may take.
const RESERVED: &[&str] = &[
    "admin",
    "administrator",
    "root",
    "system",
    "support",
    "broker",
    "me",
];
/// Longest profile field accepted.
const MAX_FIELD: usize = 512;

/// Normalises a username: lowercase, only `[a-z0-9._-]`, 3 to 32 characters.
pub fn normalise_username(raw: &str) -> Result<String, UserError> {
    let name = raw.trim().to_lowercase();
    let valid = (3..=32).contains(&name.chars().count())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'));
    if !valid {
        return Err(UserError::Invalid(
            "a username has 3 to 32 of a-z, 0-9, '.', '_' and '-'".to_owned(),
        ));
    }
    if RESERVED.contains(&name.as_str()) {
        return Err(UserError::Invalid(format!("username {name:?} is reserved")));
    }
    Ok(name)
}

/// A username suggestion from profile claims: nickname, e-mail local part, given name.
fn suggestion(profile: &Profile) -> String {
    let candidates = [
        profile.nickname.as_deref(),
        profile.email.as_deref().and_then(|e| e.split('@').next()),
        profile.given_name.as_deref(),
    ];
    for candidate in candidates.into_iter().flatten() {
        let cleaned: String = candidate
            .to_lowercase()
            .chars()
            .filter(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')
            })
            .take(24)
            .collect();
        if normalise_username(&cleaned).is_ok() {
            return cleaned;
        }
    }
    "user".to_owned()
}

fn clip(value: Option<String>) -> Option<String> {
    value
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .map(|v| v.chars().take(MAX_FIELD).collect())
}

/// The user table.
pub struct UserStore {
    users: Arc<dyn Table>,
    subs: Arc<dyn Table>,
    usernames: Arc<dyn Table>,
    banned: Arc<dyn Table>,
    banned_subs: Arc<dyn Table>,
}

fn encode(user: &User) -> Vec<u8> {
    serde_json::to_vec(user).expect("user serializes")
}

fn decode(id: &str, bytes: &[u8]) -> Result<User, UserError> {
    serde_json::from_slice(bytes).map_err(|e| UserError::Store(format!("corrupt user {id}: {e}")))
}

impl UserStore {
    /// Opens the plugin's trees in `db` (`auth-users`, `auth-subs`…).
    pub fn open(db: &sled::Db) -> Result<UserStore, UserError> {
        UserStore::on(&|name| Ok(Arc::new(SledTable::open(db, &format!("auth-{name}"))?)))
    }

    /// The user table on the tables `open` gives for the names `users`, `subs`, `usernames`,
    /// `banned` and `banned-subs`.
    pub fn on(open: OpenTable<'_>) -> Result<UserStore, UserError> {
        Ok(UserStore {
            users: open("users")?,
            subs: open("subs")?,
            usernames: open("usernames")?,
            banned: open("banned")?,
            banned_subs: open("banned-subs")?,
        })
    }

    /// True when `sub` belongs to a deleted (banned) user.
    pub async fn is_banned(&self, sub: &str) -> Result<bool, UserError> {
        Ok(self.banned_subs.get(sub).await?.is_some())
    }

    /// True when `id` is a deleted (banned) user's.
    pub async fn is_deleted(&self, id: &str) -> Result<bool, UserError> {
        Ok(self.banned.get(id).await?.is_some())
    }

    /// The user with `id`.
    pub async fn get(&self, id: &str) -> Result<Option<User>, UserError> {
        Ok(self
            .users
            .get(id)
            .await?
            .and_then(|bytes| serde_json::from_slice(&bytes).ok()))
    }

    /// The user a `sub` is linked to.
    pub async fn by_sub(&self, sub: &str) -> Result<Option<User>, UserError> {
        match self.subs.get(sub).await? {
            Some(id) => self.get(&String::from_utf8_lossy(&id)).await,
            None => Ok(None),
        }
    }

    /// Records a verified login: creates the user on first sight of `sub` (race-free), and
    /// otherwise refreshes `lastLoginAt` and the profile fields the user did not edit. A
    /// deleted user's `sub` is [`UserError::Banned`].
    pub async fn login(&self, sub: &str, profile: &Profile, now: i64) -> Result<User, UserError> {
        loop {
            if self.is_banned(sub).await? {
                return Err(UserError::Banned);
            }
            if let Some(id) = self.subs.get(sub).await? {
                let id = String::from_utf8_lossy(&id).into_owned();
                let updated = self
                    .modify(&id, |user| {
                        user.last_login_at = now;
                        let fields = [
                            ("firstName", &mut user.first_name, &profile.given_name),
                            ("lastName", &mut user.last_name, &profile.family_name),
                            ("profileImgUrl", &mut user.profile_img_url, &profile.picture),
                        ];
                        for (name, field, claim) in fields {
                            if claim.is_some() && !user.edited.iter().any(|e| e == name) {
                                *field = clip(claim.clone());
                            }
                        }
                        Ok(())
                    })
                    .await?;
                match updated {
                    Some(user) => return Ok(user),
                    // Deleted meanwhile: its sub link is stale; create afresh.
                    None => {
                        self.subs.swap(sub, Some(id.as_bytes()), None).await?;
                        continue;
                    }
                }
            }
            if let Some(user) = self.create(sub, profile, now).await? {
                // A deletion that raced this first login banned the sub meanwhile.
                if self.is_banned(sub).await? {
                    self.remove(&user).await?;
                    return Err(UserError::Banned);
                }
                return Ok(user);
            }
        }
    }

    /// Creates a user for `sub`; `None` when a concurrent login created it first.
    async fn create(
        &self,
        sub: &str,
        profile: &Profile,
        now: i64,
    ) -> Result<Option<User>, UserError> {
        let id = format!("{:012x}{:08x}", now, rand::thread_rng().gen::<u32>());
        let username = self.reserve_username(&suggestion(profile), &id).await?;
        let user = User {
            id: id.clone(),
            username: username.clone(),
            oauth_sub: sub.to_owned(),
            identities: vec![sub.to_owned()],
            first_name: clip(profile.given_name.clone()),
            last_name: clip(profile.family_name.clone()),
            profile_img_url: clip(profile.picture.clone()),
            created_at: now,
            last_login_at: now,
            edited: Vec::new(),
        };
        // The record exists before the sub points at it, so a reader never finds a dangling
        // link; if another login linked the sub first, undo ours.
        self.users.insert(&id, encode(&user)).await?;
        if !self
            .subs
            .swap(sub, None, Some(id.as_bytes().to_vec()))
            .await?
        {
            self.users.remove(&id).await?;
            self.usernames.remove(&username).await?;
            return Ok(None);
        }
        Ok(Some(user))
    }

    /// Claims a free username near `wanted` for `id`: `wanted`, then `wanted2`, `wanted3`…
    async fn reserve_username(&self, wanted: &str, id: &str) -> Result<String, UserError> {
        for attempt in 1..=50u32 {
            let candidate = match attempt {
                1 => wanted.to_owned(),
                n if n < 40 => format!("{wanted}{n}"),
                _ => format!("{wanted}{:06}", rand::thread_rng().gen_range(0..1_000_000)),
            };
            if normalise_username(&candidate).is_err() {
                continue;
            }
            if self
                .usernames
                .swap(&candidate, None, Some(id.as_bytes().to_vec()))
                .await?
            {
                return Ok(candidate);
            }
        }
        Err(UserError::Store("no free username found".to_owned()))
    }

    /// Applies `change` to the user atomically (compare-and-swap); `None` if there is none.
    async fn modify(
        &self,
        id: &str,
        change: impl Fn(&mut User) -> Result<(), UserError>,
    ) -> Result<Option<User>, UserError> {
        loop {
            let Some(old) = self.users.get(id).await? else {
                return Ok(None);
            };
            let mut user = decode(id, &old)?;
            change(&mut user)?;
            if self.users.swap(id, Some(&old), Some(encode(&user))).await? {
                return Ok(Some(user));
            }
        }
    }

    /// Applies a patch. `by_user` marks edited profile fields so logins keep them.
    pub async fn update(
        &self,
        id: &str,
        patch: &UserPatch,
        by_user: bool,
    ) -> Result<User, UserError> {
        let current = self.get(id).await?.ok_or(UserError::NotFound)?;
        let mut released = None;
        if let Some(wanted) = &patch.username {
            let name = normalise_username(wanted)?;
            if name != current.username {
                let taken = !self
                    .usernames
                    .swap(&name, None, Some(id.as_bytes().to_vec()))
                    .await?;
                if taken {
                    return Err(UserError::UsernameTaken(name));
                }
                released = Some((current.username.clone(), name));
            }
        }
        for value in [&patch.first_name, &patch.last_name, &patch.profile_img_url]
            .into_iter()
            .flatten()
        {
            if value.len() > MAX_FIELD {
                return Err(UserError::Invalid(format!(
                    "fields are at most {MAX_FIELD} bytes"
                )));
            }
        }
        let updated = self
            .modify(id, |user| {
                if let Some((_, new)) = &released {
                    user.username = new.clone();
                }
                let fields = [
                    ("firstName", &mut user.first_name, &patch.first_name),
                    ("lastName", &mut user.last_name, &patch.last_name),
                    (
                        "profileImgUrl",
                        &mut user.profile_img_url,
                        &patch.profile_img_url,
                    ),
                ];
                for (name, field, value) in fields {
                    if let Some(value) = value {
                        *field = clip(Some(value.clone()));
                        if by_user && !user.edited.iter().any(|e| e == name) {
                            user.edited.push(name.to_owned());
                        }
                    }
                }
                Ok(())
            })
            .await?;
        match (updated, released) {
            (Some(user), Some((old, _))) => {
                self.usernames.swap(&old, Some(id.as_bytes()), None).await?;
                Ok(user)
            }
            (Some(user), None) => Ok(user),
            (None, Some((_, new))) => {
                self.usernames.remove(&new).await?;
                Err(UserError::NotFound)
            }
            (None, None) => Err(UserError::NotFound),
        }
    }

    /// Deletes the user and bans them: the tombstones go in first, so no login of theirs
    /// slips between, then the row, its identities and its username go. True if there was
    /// one.
    pub async fn delete(&self, id: &str) -> Result<bool, UserError> {
        let Some(user) = self.get(id).await? else {
            return Ok(false);
        };
        for sub in &user.identities {
            self.banned_subs.insert(sub, id.as_bytes().to_vec()).await?;
        }
        // Last of the tombstones: a watcher of this table (the other nodes of a cluster) sees
        // the user banned only once their logins are refused.
        self.banned.insert(id, encode(&user)).await?;
        self.remove(&user).await?;
        self.banned.flush().await?;
        Ok(true)
    }

    /// Removes the user's row, identities and username (each only while still theirs).
    async fn remove(&self, user: &User) -> Result<(), UserError> {
        let id = user.id.as_bytes();
        for sub in &user.identities {
            self.subs.swap(sub, Some(id), None).await?;
        }
        self.usernames.swap(&user.username, Some(id), None).await?;
        self.users.remove(&user.id).await?;
        Ok(())
    }

    /// Lifts the ban on deleted user `id` and brings them back as they were: same id (their
    /// clientId), identities and profile, and their username unless someone took it since
    /// (then a free one near it). [`UserError::NotFound`] when no deleted user has that id.
    pub async fn restore(&self, id: &str) -> Result<User, UserError> {
        let Some(bytes) = self.banned.get(id).await? else {
            return Err(UserError::NotFound);
        };
        let mut user = decode(id, &bytes)?;
        let kept = self
            .usernames
            .swap(&user.username, None, Some(id.as_bytes().to_vec()))
            .await?;
        if !kept {
            user.username = self.reserve_username(&user.username, id).await?;
        }
        self.users.insert(id, encode(&user)).await?;
        for sub in &user.identities {
            // A banned sub cannot have logged in since, so its link is free.
            self.subs
                .swap(sub, None, Some(id.as_bytes().to_vec()))
                .await?;
            self.banned_subs
                .swap(sub, Some(id.as_bytes()), None)
                .await?;
        }
        self.banned.remove(id).await?;
        Ok(user)
    }

    /// Users in id (creation) order after `after`, whose username, names or sub contain
    /// `query` (case-insensitive), at most `limit`.
    pub async fn list(
        &self,
        query: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<User>, UserError> {
        let query = query.map(str::to_lowercase).filter(|q| !q.is_empty());
        let mut out = Vec::new();
        let mut visit = |_: &str, bytes: &[u8]| {
            let Ok(user) = serde_json::from_slice::<User>(bytes) else {
                return true;
            };
            let matches = query.as_ref().is_none_or(|q| {
                [
                    Some(&user.username),
                    user.first_name.as_ref(),
                    user.last_name.as_ref(),
                    Some(&user.oauth_sub),
                ]
                .into_iter()
                .flatten()
                .any(|field| field.to_lowercase().contains(q.as_str()))
            });
            if matches {
                out.push(user);
            }
            out.len() < limit
        };
        self.users.scan(after, &mut visit).await?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, UserStore) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        (dir, UserStore::open(&db).unwrap())
    }

    fn profile(nick: &str, given: &str) -> Profile {
        Profile {
            nickname: Some(nick.into()),
            given_name: Some(given.into()),
            family_name: Some("Doe".into()),
            picture: Some("https://img/1".into()),
            email: None,
        }
    }

    #[tokio::test]
    async fn first_login_creates_later_logins_refresh_unedited_fields() {
        let (_dir, users) = store();
        let first = users
            .login("auth0|1", &profile("Jane.Doe", "Jane"), 1)
            .await
            .unwrap();
        assert_eq!(first.username, "jane.doe");
        assert_eq!(first.first_name.as_deref(), Some("Jane"));
        users
            .update(
                &first.id,
                &UserPatch {
                    first_name: Some("Janet".into()),
                    ..Default::default()
                },
                true,
            )
            .await
            .unwrap();
        let mut later = profile("other", "Jenny");
        later.picture = Some("https://img/2".into());
        let again = users.login("auth0|1", &later, 2).await.unwrap();
        assert_eq!(again.id, first.id);
        assert_eq!(
            again.username, "jane.doe",
            "usernames are never overwritten by logins"
        );
        assert_eq!(
            again.first_name.as_deref(),
            Some("Janet"),
            "edited fields are kept"
        );
        assert_eq!(again.profile_img_url.as_deref(), Some("https://img/2"));
        assert_eq!(again.last_login_at, 2);
    }

    #[tokio::test]
    async fn usernames_stay_unique() {
        let (_dir, users) = store();
        let a = users
            .login("auth0|a", &profile("sam", "Sam"), 1)
            .await
            .unwrap();
        let b = users
            .login("google|b", &profile("sam", "Sam"), 1)
            .await
            .unwrap();
        assert_eq!((a.username.as_str(), b.username.as_str()), ("sam", "sam2"));
        let err = users
            .update(
                &b.id,
                &UserPatch {
                    username: Some("SAM".into()),
                    ..Default::default()
                },
                true,
            )
            .await
            .unwrap_err();
        assert_eq!(err, UserError::UsernameTaken("sam".into()));
        assert!(matches!(
            users
                .update(
                    &b.id,
                    &UserPatch {
                        username: Some("a!".into()),
                        ..Default::default()
                    },
                    true
                )
                .await,
            Err(UserError::Invalid(_))
        ));
        let renamed = users
            .update(
                &b.id,
                &UserPatch {
                    username: Some("samuel".into()),
                    ..Default::default()
                },
                true,
            )
            .await
            .unwrap();
        assert_eq!(renamed.username, "samuel");
        // "sam2" is free again.
        let c = users
            .login("github|c", &profile("sam", "Sam"), 1)
            .await
            .unwrap();
        assert_eq!(c.username, "sam2");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_first_logins_create_one_user() {
        let (_dir, users) = store();
        let users = std::sync::Arc::new(users);
        let logins: Vec<_> = (0..8)
            .map(|_| {
                let users = users.clone();
                tokio::spawn(async move {
                    users
                        .login("auth0|race", &profile("racer", "R"), 1)
                        .await
                        .unwrap()
                        .id
                })
            })
            .collect();
        let mut ids = std::collections::BTreeSet::new();
        for login in logins {
            ids.insert(login.await.unwrap());
        }
        assert_eq!(ids.len(), 1);
        assert_eq!(users.list(None, None, 100).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn delete_bans_the_user_until_restored() {
        let (_dir, users) = store();
        let u = users
            .login("auth0|gone", &profile("ghost", "G"), 1)
            .await
            .unwrap();
        assert!(users.delete(&u.id).await.unwrap());
        assert!(users.by_sub("auth0|gone").await.unwrap().is_none());
        assert!(users.get(&u.id).await.unwrap().is_none());
        assert_eq!(
            users.login("auth0|gone", &profile("ghost", "G"), 2).await,
            Err(UserError::Banned)
        );
        // Their username is free meanwhile; a restore finds another.
        let taker = users
            .login("auth0|new", &profile("ghost", "N"), 3)
            .await
            .unwrap();
        assert_eq!(taker.username, "ghost");
        let back = users.restore(&u.id).await.unwrap();
        assert_eq!(back.id, u.id);
        assert_eq!(back.username, "ghost2");
        assert_eq!(users.restore(&u.id).await, Err(UserError::NotFound));
        let again = users
            .login("auth0|gone", &profile("ghost", "G"), 4)
            .await
            .unwrap();
        assert_eq!(again.id, u.id);
        assert_eq!(again.last_login_at, 4);
    }

    #[tokio::test]
    async fn listing_searches_and_pages() {
        let (_dir, users) = store();
        for (i, nick) in ["alpha", "beta", "alpine"].iter().enumerate() {
            users
                .login(&format!("s{i}"), &profile(nick, "X"), i as i64 + 1)
                .await
                .unwrap();
        }
        let al = users.list(Some("AL"), None, 10).await.unwrap();
        assert_eq!(al.len(), 2);
        let first = users.list(None, None, 1).await.unwrap();
        let rest = users.list(None, Some(&first[0].id), 10).await.unwrap();
        assert_eq!(rest.len(), 2);
    }
}
