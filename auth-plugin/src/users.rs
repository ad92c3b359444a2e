//! The user table, in sled trees the plugin owns: `auth-users` (id → user), `auth-subs`
//! (every linked `sub` → id) and `auth-usernames` (normalised username → id). Uniqueness of
//! `sub` and username is enforced by compare-and-swap on those index trees, so two concurrent
//! first logins of one person create one user, and a username is never given out twice.
//! Profile fields follow the IdP on each login unless the user edited them (`edited`).
//! Deleting a user bans them: tombstones in `auth-banned` (id → the user as they were) and
//! `auth-banned-subs` (each of their `sub`s → id) refuse their logins until a restore.

use rand::Rng;
use serde::{Deserialize, Serialize};

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
    users: sled::Tree,
    subs: sled::Tree,
    usernames: sled::Tree,
    banned: sled::Tree,
    banned_subs: sled::Tree,
}

impl UserStore {
    /// Opens the plugin's trees in `db`.
    pub fn open(db: &sled::Db) -> Result<UserStore, UserError> {
        Ok(UserStore {
            users: db.open_tree("auth-users")?,
            subs: db.open_tree("auth-subs")?,
            usernames: db.open_tree("auth-usernames")?,
            banned: db.open_tree("auth-banned")?,
            banned_subs: db.open_tree("auth-banned-subs")?,
        })
    }

    /// True when `sub` belongs to a deleted (banned) user.
    pub fn is_banned(&self, sub: &str) -> Result<bool, UserError> {
        Ok(self.banned_subs.contains_key(sub)?)
    }

    /// True when `id` is a deleted (banned) user's.
    pub fn is_deleted(&self, id: &str) -> Result<bool, UserError> {
        Ok(self.banned.contains_key(id)?)
    }

    /// The user with `id`.
    pub fn get(&self, id: &str) -> Result<Option<User>, UserError> {
        Ok(self
            .users
            .get(id)?
            .and_then(|bytes| serde_json::from_slice(&bytes).ok()))
    }

    /// The user a `sub` is linked to.
    pub fn by_sub(&self, sub: &str) -> Result<Option<User>, UserError> {
        match self.subs.get(sub)? {
            Some(id) => self.get(&String::from_utf8_lossy(&id)),
            None => Ok(None),
        }
    }

    /// Records a verified login: creates the user on first sight of `sub` (race-free), and
    /// otherwise refreshes `lastLoginAt` and the profile fields the user did not edit. A
    /// deleted user's `sub` is [`UserError::Banned`].
    pub fn login(&self, sub: &str, profile: &Profile, now: i64) -> Result<User, UserError> {
        loop {
            if self.is_banned(sub)? {
                return Err(UserError::Banned);
            }
            if let Some(id) = self.subs.get(sub)? {
                let id = String::from_utf8_lossy(&id).into_owned();
                let updated = self.modify(&id, |user| {
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
                })?;
                match updated {
                    Some(user) => return Ok(user),
                    // Deleted meanwhile: its sub link is stale; create afresh.
                    None => {
                        let _ =
                            self.subs
                                .compare_and_swap(sub, Some(id.as_bytes()), None::<&[u8]>)?;
                        continue;
                    }
                }
            }
            if let Some(user) = self.create(sub, profile, now)? {
                // A deletion that raced this first login banned the sub meanwhile.
                if self.is_banned(sub)? {
                    self.remove(&user)?;
                    return Err(UserError::Banned);
                }
                return Ok(user);
            }
        }
    }

    /// Creates a user for `sub`; `None` when a concurrent login created it first.
    fn create(&self, sub: &str, profile: &Profile, now: i64) -> Result<Option<User>, UserError> {
        let id = format!("{:012x}{:08x}", now, rand::thread_rng().gen::<u32>());
        let username = self.reserve_username(&suggestion(profile), &id)?;
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
        self.users.insert(
            id.as_bytes(),
            serde_json::to_vec(&user).expect("user serializes"),
        )?;
        if self
            .subs
            .compare_and_swap(sub, None::<&[u8]>, Some(id.as_bytes()))?
            .is_err()
        {
            self.users.remove(id.as_bytes())?;
            self.usernames.remove(username.as_bytes())?;
            return Ok(None);
        }
        Ok(Some(user))
    }

    /// Claims a free username near `wanted` for `id`: `wanted`, then `wanted2`, `wanted3`…
    fn reserve_username(&self, wanted: &str, id: &str) -> Result<String, UserError> {
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
                .compare_and_swap(candidate.as_bytes(), None::<&[u8]>, Some(id.as_bytes()))?
                .is_ok()
            {
                return Ok(candidate);
            }
        }
        Err(UserError::Store("no free username found".to_owned()))
    }

    /// Applies `change` to the user atomically (compare-and-swap); `None` if there is none.
    fn modify(
        &self,
        id: &str,
        change: impl Fn(&mut User) -> Result<(), UserError>,
    ) -> Result<Option<User>, UserError> {
        loop {
            let Some(old) = self.users.get(id)? else {
                return Ok(None);
            };
            let mut user: User = serde_json::from_slice(&old)
                .map_err(|e| UserError::Store(format!("corrupt user {id}: {e}")))?;
            change(&mut user)?;
            let new = serde_json::to_vec(&user).expect("user serializes");
            if self
                .users
                .compare_and_swap(id, Some(&old), Some(new))?
                .is_ok()
            {
                return Ok(Some(user));
            }
        }
    }

    /// Applies a patch. `by_user` marks edited profile fields so logins keep them.
    pub fn update(&self, id: &str, patch: &UserPatch, by_user: bool) -> Result<User, UserError> {
        let current = self.get(id)?.ok_or(UserError::NotFound)?;
        let mut released = None;
        if let Some(wanted) = &patch.username {
            let name = normalise_username(wanted)?;
            if name != current.username {
                let taken = self
                    .usernames
                    .compare_and_swap(name.as_bytes(), None::<&[u8]>, Some(id.as_bytes()))?
                    .is_err();
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
        let updated = self.modify(id, |user| {
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
        })?;
        match (updated, released) {
            (Some(user), Some((old, _))) => {
                let _ = self.usernames.compare_and_swap(
                    old.as_bytes(),
                    Some(id.as_bytes()),
                    None::<&[u8]>,
                )?;
                Ok(user)
            }
            (Some(user), None) => Ok(user),
            (None, Some((_, new))) => {
                self.usernames.remove(new.as_bytes())?;
                Err(UserError::NotFound)
            }
            (None, None) => Err(UserError::NotFound),
        }
    }

    /// Deletes the user and bans them: the tombstones go in first, so no login of theirs
    /// slips between, then the row, its identities and its username go. True if there was
    /// one.
    pub fn delete(&self, id: &str) -> Result<bool, UserError> {
        let Some(user) = self.get(id)? else {
            return Ok(false);
        };
        self.banned.insert(
            id.as_bytes(),
            serde_json::to_vec(&user).expect("user serializes"),
        )?;
        for sub in &user.identities {
            self.banned_subs.insert(sub.as_bytes(), id.as_bytes())?;
        }
        self.remove(&user)?;
        self.banned.flush()?;
        Ok(true)
    }

    /// Removes the user's row, identities and username (each only while still theirs).
    fn remove(&self, user: &User) -> Result<(), UserError> {
        let id = user.id.as_bytes();
        for sub in &user.identities {
            let _ = self
                .subs
                .compare_and_swap(sub.as_bytes(), Some(id), None::<&[u8]>)?;
        }
        let _ =
            self.usernames
                .compare_and_swap(user.username.as_bytes(), Some(id), None::<&[u8]>)?;
        self.users.remove(id)?;
        Ok(())
    }

    /// Lifts the ban on deleted user `id` and brings them back as they were: same id (their
    /// clientId), identities and profile, and their username unless someone took it since
    /// (then a free one near it). [`UserError::NotFound`] when no deleted user has that id.
    pub fn restore(&self, id: &str) -> Result<User, UserError> {
        let Some(bytes) = self.banned.get(id)? else {
            return Err(UserError::NotFound);
        };
        let mut user: User = serde_json::from_slice(&bytes)
            .map_err(|e| UserError::Store(format!("corrupt deleted user {id}: {e}")))?;
        let kept = self
            .usernames
            .compare_and_swap(user.username.as_bytes(), None::<&[u8]>, Some(id.as_bytes()))?
            .is_ok();
        if !kept {
            user.username = self.reserve_username(&user.username, id)?;
        }
        self.users.insert(
            id.as_bytes(),
            serde_json::to_vec(&user).expect("user serializes"),
        )?;
        for sub in &user.identities {
            // A banned sub cannot have logged in since, so its link is free.
            let _ =
                self.subs
                    .compare_and_swap(sub.as_bytes(), None::<&[u8]>, Some(id.as_bytes()))?;
            let _ = self.banned_subs.compare_and_swap(
                sub.as_bytes(),
                Some(id.as_bytes()),
                None::<&[u8]>,
            )?;
        }
        self.banned.remove(id)?;
        Ok(user)
    }

    /// Users in id (creation) order after `after`, whose username, names or sub contain
    /// `query` (case-insensitive), at most `limit`.
    pub fn list(
        &self,
        query: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<User>, UserError> {
        let query = query.map(str::to_lowercase).filter(|q| !q.is_empty());
        let start = match after {
            Some(a) => std::ops::Bound::Excluded(a.as_bytes().to_vec()),
            None => std::ops::Bound::Unbounded,
        };
        let mut out = Vec::new();
        for item in self
            .users
            .range::<Vec<u8>, _>((start, std::ops::Bound::Unbounded))
        {
            let (_, bytes) = item?;
            let Ok(user) = serde_json::from_slice::<User>(&bytes) else {
                continue;
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
                if out.len() >= limit {
                    break;
                }
            }
        }
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

    #[test]
    fn first_login_creates_later_logins_refresh_unedited_fields() {
        let (_dir, users) = store();
        let first = users
            .login("auth0|1", &profile("Jane.Doe", "Jane"), 1)
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
            .unwrap();
        let mut later = profile("other", "Jenny");
        later.picture = Some("https://img/2".into());
        let again = users.login("auth0|1", &later, 2).unwrap();
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

    #[test]
    fn usernames_stay_unique() {
        let (_dir, users) = store();
        let a = users.login("auth0|a", &profile("sam", "Sam"), 1).unwrap();
        let b = users.login("google|b", &profile("sam", "Sam"), 1).unwrap();
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
            .unwrap_err();
        assert_eq!(err, UserError::UsernameTaken("sam".into()));
        assert!(matches!(
            users.update(
                &b.id,
                &UserPatch {
                    username: Some("a!".into()),
                    ..Default::default()
                },
                true
            ),
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
            .unwrap();
        assert_eq!(renamed.username, "samuel");
        // "sam2" is free again.
        let c = users.login("github|c", &profile("sam", "Sam"), 1).unwrap();
        assert_eq!(c.username, "sam2");
    }

    #[test]
    fn concurrent_first_logins_create_one_user() {
        let (_dir, users) = store();
        let users = std::sync::Arc::new(users);
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let users = users.clone();
                std::thread::spawn(move || {
                    users
                        .login("auth0|race", &profile("racer", "R"), 1)
                        .unwrap()
                        .id
                })
            })
            .collect();
        let ids: std::collections::BTreeSet<String> =
            handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert_eq!(ids.len(), 1);
        assert_eq!(users.list(None, None, 100).unwrap().len(), 1);
    }

    #[test]
    fn delete_bans_the_user_until_restored() {
        let (_dir, users) = store();
        let u = users
            .login("auth0|gone", &profile("ghost", "G"), 1)
            .unwrap();
        assert!(users.delete(&u.id).unwrap());
        assert!(users.by_sub("auth0|gone").unwrap().is_none());
        assert!(users.get(&u.id).unwrap().is_none());
        assert_eq!(
            users.login("auth0|gone", &profile("ghost", "G"), 2),
            Err(UserError::Banned)
        );
        // Their username is free meanwhile; a restore finds another.
        let taker = users.login("auth0|new", &profile("ghost", "N"), 3).unwrap();
        assert_eq!(taker.username, "ghost");
        let back = users.restore(&u.id).unwrap();
        assert_eq!(back.id, u.id);
        assert_eq!(back.username, "ghost2");
        assert_eq!(users.restore(&u.id), Err(UserError::NotFound));
        let again = users
            .login("auth0|gone", &profile("ghost", "G"), 4)
            .unwrap();
        assert_eq!(again.id, u.id);
        assert_eq!(again.last_login_at, 4);
    }

    #[test]
    fn listing_searches_and_pages() {
        let (_dir, users) = store();
        for (i, nick) in ["alpha", "beta", "alpine"].iter().enumerate() {
            users
                .login(&format!("s{i}"), &profile(nick, "X"), i as i64 + 1)
                .unwrap();
        }
        let al = users.list(Some("AL"), None, 10).unwrap();
        assert_eq!(al.len(), 2);
        let first = users.list(None, None, 1).unwrap();
        let rest = users.list(None, Some(&first[0].id), 10).unwrap();
        assert_eq!(rest.len(), 2);
    }
}
