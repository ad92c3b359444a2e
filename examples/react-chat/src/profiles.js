import { useEffect, useState } from 'react';
import { useAbly } from 'ably/react';

// Who is behind a clientId: the public profile from the broker's user table
// (GET /api/users/{id}/profile → {id, username, firstName, lastName, profileImgUrl}), asked for
// with the realtime client's own credentials, once per id for the life of the page. Names and
// pictures never come from what other clients put in presence or messages, so nobody can
// appear under someone else's name.

const cache = new Map(); // clientId → Promise of the profile, or of null for "no such user"

function fetchProfile(client, id) {
  let entry = cache.get(id);
  if (!entry) {
    entry = client
      .request('get', `/api/users/${encodeURIComponent(id)}/profile`, 3)
      .then((res) => {
        if (res.success) return res.items[0] ?? null;
        if (res.statusCode === 404) return null;
        throw new Error(res.errorMessage || `profile request failed (${res.statusCode})`);
      })
      .catch((err) => {
        // Not an answer about the user (network, credentials): ask again next time.
        cache.delete(id);
        throw err;
      });
    cache.set(id, entry);
  }
  return entry;
}

// The profiles of `ids`: a Map from clientId to the profile, to null when the broker knows no
// such user, or without an entry while the answer is on its way.
export function useProfiles(ids) {
  const client = useAbly();
  const [profiles, setProfiles] = useState(() => new Map());
  const wanted = [...new Set(ids.filter(Boolean))].sort().join('\n');

  useEffect(() => {
    let live = true;
    for (const id of wanted ? wanted.split('\n') : []) {
      fetchProfile(client, id).then(
        (profile) => {
          if (!live) return;
          setProfiles((prev) => {
            if (prev.has(id) && prev.get(id) === profile) return prev;
            return new Map(prev).set(id, profile);
          });
        },
        (err) => console.warn(`profile of ${id}:`, err.message || err),
      );
    }
    return () => {
      live = false;
    };
  }, [client, wanted]);

  return profiles;
}

// The name to show: first and last name when the user has them, else the username; the
// clientId itself only when the broker knows no such user.
export function displayName(profile, clientId) {
  if (profile) {
    return [profile.firstName, profile.lastName].filter(Boolean).join(' ') || profile.username;
  }
  return profile === null ? clientId || 'anonymous' : '…';
}
