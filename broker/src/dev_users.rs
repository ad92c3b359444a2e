//! The development login's users: every username `/api/dev/login` has issued a token for, in
//! the sled tree `dev-users` of the broker's database. There is no user table without Auth0,
//! and a development user's clientId is their username, so this record is all that
//! `/api/users/{id}/profile` can honestly answer with: the name, and no real names or picture.
//! Kept across restarts, so senders in a channel's history are still known. In cluster mode
//! the names are also shared with every node (`cluster/mod.rs`).

use auth_plugin::PublicProfile;

/// The usernames the development login has handed out, each with its first login (ms since
/// the epoch).
pub struct DevUsers {
    tree: sled::Tree,
}

impl DevUsers {
    /// Opens the record in `db`.
    pub fn open(db: &sled::Db) -> Result<DevUsers, sled::Error> {
        Ok(DevUsers {
            tree: db.open_tree("dev-users")?,
        })
    }

    /// Records a login of the (already normalised) `username`; later logins change nothing.
    pub fn record(&self, username: &str, now_ms: i64) -> Result<(), sled::Error> {
        // Losing the race to a concurrent first login of the same name is fine: either
        // timestamp will do.
        let _ = self.tree.compare_and_swap(
            username,
            None as Option<&[u8]>,
            Some(&now_ms.to_be_bytes()[..]),
        )?;
        Ok(())
    }

    /// The profile of `id`, when the development login has issued a token for it.
    pub fn profile(&self, id: &str) -> Result<Option<PublicProfile>, sled::Error> {
        Ok(self.tree.contains_key(id)?.then(|| profile(id)))
    }
}

/// The profile of development user `id`: the name, and nothing else.
pub fn profile(id: &str) -> PublicProfile {
    PublicProfile {
        id: id.to_owned(),
        username: id.to_owned(),
        first_name: None,
        last_name: None,
        profile_img_url: None,
    }
}
