//! Credentials and users.

use std::collections::HashMap;

/// An authenticated principal. Buckets are owned by `id`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct User {
    /// Stable owner id, as stored in [`crate::BucketInfo::owner`].
    pub id: String,
    /// Shown as `DisplayName` in listings.
    pub display_name: String,
}

/// The secret behind one access key, and whose it is.
#[derive(Clone)]
pub struct Credential {
    pub secret_key: String,
    pub user: User,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("secret_key", &"<redacted>")
            .field("user", &self.user)
            .finish()
    }
}

/// Looks up access keys. Called once per signed request.
pub trait CredentialStore: Send + Sync + 'static {
    fn lookup(&self, access_key: &str) -> Option<Credential>;
}

/// A fixed set of access keys, e.g. loaded from a config file.
#[derive(Debug, Clone, Default)]
pub struct StaticCredentials {
    keys: HashMap<String, Credential>,
}

impl StaticCredentials {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a key pair for a user whose id and display name are both `user`.
    pub fn with_user(
        mut self,
        user: impl Into<String>,
        access_key: impl Into<String>,
        secret: impl Into<String>,
    ) -> Self {
        let user = user.into();
        self.insert(
            access_key,
            Credential {
                secret_key: secret.into(),
                user: User {
                    id: user.clone(),
                    display_name: user,
                },
            },
        );
        self
    }

    pub fn insert(&mut self, access_key: impl Into<String>, credential: Credential) {
        self.keys.insert(access_key.into(), credential);
    }
}

impl CredentialStore for StaticCredentials {
    fn lookup(&self, access_key: &str) -> Option<Credential> {
        self.keys.get(access_key).cloned()
    }
}
