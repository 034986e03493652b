//! Console sessions: sign-in against the S3 users, server-side session
//! records behind a random cookie, a CSRF token per session, expiry (absolute
//! and idle) and a small limit on failed sign-ins.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rand::RngCore;

use crate::config::UserConfig;

/// Name of the session cookie (Path=/ui, HttpOnly, SameSite=Strict).
pub const COOKIE: &str = "strato_console";

/// Sessions kept at most; sign-in beyond it drops the oldest session.
const MAX_SESSIONS: usize = 4096;
/// Failed sign-ins per access key (and in all) within [`FAIL_WINDOW`] before
/// further attempts are refused until the window passes.
const MAX_FAILS_PER_KEY: u32 = 5;
const MAX_FAILS_TOTAL: u32 = 50;
const FAIL_WINDOW: Duration = Duration::from_secs(60);

/// Who is signed in.
#[derive(Debug, Clone)]
pub struct Identity {
    pub user: String,
    pub access_key: String,
    pub secret_key: String,
    /// The first user ([`crate::server::FIRST_USER`]) administers the
    /// repository and sees every bucket.
    pub admin: bool,
    pub csrf: String,
}

struct Session {
    who: Identity,
    created: Instant,
    seen: Instant,
}

#[derive(Debug, Clone, Copy)]
pub struct Expiry {
    /// A session ends this long after sign-in, whatever happens.
    pub lifetime: Duration,
    /// And after this long without a request.
    pub idle: Duration,
}

#[derive(Debug, PartialEq, Eq)]
pub enum SignInError {
    /// Unknown access key or wrong secret: one answer for both, so the
    /// console does not tell which access keys exist.
    Refused,
    /// Too many failures lately.
    Throttled,
}

pub struct Sessions {
    users: Vec<UserConfig>,
    expiry: Expiry,
    map: Mutex<HashMap<String, Session>>,
    fails: Mutex<Fails>,
}

struct Fails {
    window_start: Instant,
    total: u32,
    per_key: HashMap<String, u32>,
}

pub(crate) fn random_hex() -> String {
    let mut b = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

/// Equal without an early exit, so the time taken does not tell how much of
/// a guessed secret was right.
pub fn ct_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut diff = (a.len() != b.len()) as u8;
    for i in 0..a.len().max(b.len()) {
        diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0);
    }
    diff == 0
}

impl Sessions {
    pub fn new(users: Vec<UserConfig>, expiry: Expiry) -> Sessions {
        Sessions {
            users,
            expiry,
            map: Mutex::new(HashMap::new()),
            fails: Mutex::new(Fails {
                window_start: Instant::now(),
                total: 0,
                per_key: HashMap::new(),
            }),
        }
    }

    pub fn expiry(&self) -> Expiry {
        self.expiry
    }

    /// Check the keys and open a session; returns its cookie value.
    pub fn sign_in(
        &self,
        access_key: &str,
        secret: &str,
    ) -> Result<(String, Identity), SignInError> {
        let now = Instant::now();
        {
            let mut f = self.fails.lock();
            if now.duration_since(f.window_start) > FAIL_WINDOW {
                f.window_start = now;
                f.total = 0;
                f.per_key.clear();
            }
            if f.total >= MAX_FAILS_TOTAL
                || f.per_key.get(access_key).copied().unwrap_or(0) >= MAX_FAILS_PER_KEY
            {
                return Err(SignInError::Throttled);
            }
        }
        // Every user is compared, so the time does not depend on where (or
        // whether) the access key is in the list.
        let mut found: Option<&UserConfig> = None;
        for u in &self.users {
            let ok = ct_eq(&u.access_key, access_key) & ct_eq(&u.secret_key, secret);
            if ok && found.is_none() {
                found = Some(u);
            }
        }
        let Some(u) = found else {
            let mut f = self.fails.lock();
            f.total += 1;
            if f.per_key.len() < 10_000 || f.per_key.contains_key(access_key) {
                *f.per_key.entry(access_key.to_string()).or_default() += 1;
            }
            return Err(SignInError::Refused);
        };
        let who = Identity {
            user: u.name.clone(),
            access_key: u.access_key.clone(),
            secret_key: u.secret_key.clone(),
            admin: self.users.first().is_some_and(|first| first.name == u.name),
            csrf: random_hex(),
        };
        let id = random_hex();
        let mut map = self.map.lock();
        self.prune(&mut map, now);
        if map.len() >= MAX_SESSIONS {
            if let Some(oldest) = map
                .iter()
                .min_by_key(|(_, s)| s.created)
                .map(|(k, _)| k.clone())
            {
                map.remove(&oldest);
            }
        }
        map.insert(
            id.clone(),
            Session {
                who: who.clone(),
                created: now,
                seen: now,
            },
        );
        Ok((id, who))
    }

    fn prune(&self, map: &mut HashMap<String, Session>, now: Instant) {
        let e = self.expiry;
        map.retain(|_, s| {
            now.duration_since(s.created) < e.lifetime && now.duration_since(s.seen) < e.idle
        });
    }

    /// The session behind a cookie value, if it is live; touching it
    /// restarts its idle timer.
    pub fn lookup(&self, id: &str) -> Option<Identity> {
        let now = Instant::now();
        let mut map = self.map.lock();
        let s = map.get_mut(id)?;
        let e = self.expiry;
        if now.duration_since(s.created) >= e.lifetime || now.duration_since(s.seen) >= e.idle {
            map.remove(id);
            return None;
        }
        s.seen = now;
        Some(s.who.clone())
    }

    pub fn sign_out(&self, id: &str) {
        self.map.lock().remove(id);
    }
}

/// The session id in a `Cookie` header, if any.
pub fn cookie_value(header: &str) -> Option<&str> {
    named_cookie(header, COOKIE)
}

/// The sign-in form's cookie: the same random value as the form's hidden
/// field (double submit), so a sign-in POST from another site, which
/// carries neither (SameSite=Strict), is refused — no login CSRF.
pub const SIGNIN_COOKIE: &str = "strato_signin";

/// The value of cookie `name` in one Cookie header, if set and not empty.
pub fn named_cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|part| {
        let (k, v) = part.trim().split_once('=')?;
        (k == name && !v.is_empty()).then_some(v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users() -> Vec<UserConfig> {
        vec![
            UserConfig {
                name: "admin".into(),
                access_key: "AK1".into(),
                secret_key: "secret-one".into(),
            },
            UserConfig {
                name: "bob".into(),
                access_key: "AK2".into(),
                secret_key: "secret-two".into(),
            },
        ]
    }

    fn expiry(lifetime_ms: u64, idle_ms: u64) -> Expiry {
        Expiry {
            lifetime: Duration::from_millis(lifetime_ms),
            idle: Duration::from_millis(idle_ms),
        }
    }

    #[test]
    fn sign_in_checks_both_keys_and_marks_admin() {
        let s = Sessions::new(users(), expiry(60_000, 60_000));
        assert_eq!(
            s.sign_in("AK1", "secret-two").unwrap_err(),
            SignInError::Refused
        );
        assert_eq!(
            s.sign_in("nope", "secret-one").unwrap_err(),
            SignInError::Refused
        );
        let (id, who) = s.sign_in("AK1", "secret-one").unwrap();
        assert!(who.admin);
        assert_eq!(id.len(), 64);
        assert_eq!(who.csrf.len(), 64);
        assert_eq!(s.lookup(&id).unwrap().user, "admin");
        let (id2, bob) = s.sign_in("AK2", "secret-two").unwrap();
        assert!(!bob.admin);
        assert_ne!(id, id2);
        s.sign_out(&id);
        assert!(s.lookup(&id).is_none());
        assert!(s.lookup(&id2).is_some());
    }

    #[test]
    fn failures_are_throttled_per_key() {
        let s = Sessions::new(users(), expiry(60_000, 60_000));
        for _ in 0..MAX_FAILS_PER_KEY {
            assert_eq!(s.sign_in("AK2", "bad").unwrap_err(), SignInError::Refused);
        }
        assert_eq!(
            s.sign_in("AK2", "secret-two").unwrap_err(),
            SignInError::Throttled
        );
        // Another key is not locked out by them.
        assert!(s.sign_in("AK1", "secret-one").is_ok());
    }

    #[test]
    fn sessions_expire() {
        let s = Sessions::new(users(), expiry(60_000, 50));
        let (id, _) = s.sign_in("AK1", "secret-one").unwrap();
        std::thread::sleep(Duration::from_millis(80));
        assert!(s.lookup(&id).is_none());
        let s = Sessions::new(users(), expiry(50, 60_000));
        let (id, _) = s.sign_in("AK1", "secret-one").unwrap();
        std::thread::sleep(Duration::from_millis(80));
        assert!(s.lookup(&id).is_none());
    }

    #[test]
    fn constant_time_equality_and_cookies() {
        assert!(ct_eq("abc", "abc"));
        assert!(!ct_eq("abc", "abd"));
        assert!(!ct_eq("abc", "abcd"));
        assert!(!ct_eq("", "a"));
        assert_eq!(cookie_value("a=b; strato_console=xyz; c=d"), Some("xyz"));
        assert_eq!(cookie_value("strato_console="), None);
        assert_eq!(cookie_value("other=1"), None);
    }
}
