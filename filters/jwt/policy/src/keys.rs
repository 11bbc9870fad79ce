//! How a decision finds a provider's remote key set: the glue loads JWKS documents (one fetch
//! for all workers) and hands them to [`super::JwtPolicy::decide`] through [`KeyLookup`].

use std::collections::BTreeMap;
use std::sync::Arc;

use super::jwk::JwksSet;

/// The loaded remote key sets. Inline (`local_jwks`) sets live in the compiled policy.
pub trait KeyLookup {
    /// The key set of `provider` (a provider name), `None` while none is loaded.
    fn remote_jwks(&self, provider: &str) -> Option<&JwksSet>;
    /// Changes whenever any key set changes; the token cache is cleared when it does.
    fn generation(&self) -> u64 {
        0
    }
}

/// No remote key set loaded (policies with inline keys only, or before the first fetch).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoRemoteKeys;

impl KeyLookup for NoRemoteKeys {
    fn remote_jwks(&self, _provider: &str) -> Option<&JwksSet> {
        None
    }
}

/// A simple [`KeyLookup`]: key sets by provider name, with a generation bumped on every change.
#[derive(Debug, Clone, Default)]
pub struct RemoteKeys {
    sets: BTreeMap<String, Arc<JwksSet>>,
    generation: u64,
}

impl RemoteKeys {
    pub fn new() -> Self {
        Self::default()
    }

    /// Installs (or replaces) the key set of `provider`.
    pub fn set(&mut self, provider: &str, set: Arc<JwksSet>) {
        self.sets.insert(provider.to_owned(), set);
        self.generation = self.generation.wrapping_add(1);
    }

    /// The key set installed for `provider`, if any.
    pub fn get(&self, provider: &str) -> Option<&Arc<JwksSet>> {
        self.sets.get(provider)
    }

    /// The providers that have a key set.
    pub fn providers(&self) -> impl Iterator<Item = &str> {
        self.sets.keys().map(String::as_str)
    }

    /// Forgets the key set of `provider`.
    pub fn remove(&mut self, provider: &str) {
        if self.sets.remove(provider).is_some() {
            self.generation = self.generation.wrapping_add(1);
        }
    }
}

impl KeyLookup for RemoteKeys {
    fn remote_jwks(&self, provider: &str) -> Option<&JwksSet> {
        self.sets.get(provider).map(|s| &**s)
    }
    fn generation(&self) -> u64 {
        self.generation
    }
}
