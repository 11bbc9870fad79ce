//! Shared data (key/value with CAS) and shared queues, with each profile's semantics.
//!
//! Envoy keeps one map per `vm_id`; a set with CAS 0 overwrites unconditionally, a set with a
//! non-zero CAS must match the stored one when the key exists. ngx_wasm_module compares the CAS
//! with the stored one, a missing key counting as CAS 0: so CAS 0 only creates, and a NULL value
//! deletes. Queues exist on Envoy only (our Kong deployment declares no queue zone).

use crate::abi::Status;
use crate::host::Profile;
use std::collections::{HashMap, VecDeque};

/// A shared-data entry as a test sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedValue {
    /// The stored bytes.
    pub value: Vec<u8>,
    /// The CAS token the host returns with it (never 0).
    pub cas: u32,
}

pub(crate) struct SharedStore {
    profile: Profile,
    maps: HashMap<String, HashMap<String, SharedValue>>,
    next_cas: u32,
    queues: Vec<Queue>,
}

pub(crate) struct Queue {
    pub(crate) vm_id: String,
    pub(crate) name: String,
    pub(crate) items: VecDeque<Vec<u8>>,
    /// The VM and root context that registered it: they get `proxy_on_queue_ready`.
    pub(crate) owner: (usize, u32),
}

impl SharedStore {
    pub(crate) fn new(profile: Profile) -> SharedStore {
        SharedStore { profile, maps: HashMap::new(), next_cas: 1, queues: Vec::new() }
    }

    /// Kong has one store (the default `shm_kv` zone) for every VM.
    fn map_key<'a>(&self, vm_id: &'a str) -> &'a str {
        match self.profile {
            Profile::Envoy => vm_id,
            Profile::Kong => "",
        }
    }

    fn next_cas(&mut self) -> u32 {
        let cas = self.next_cas;
        self.next_cas = self.next_cas.wrapping_add(1).max(1);
        cas
    }

    pub(crate) fn get(&self, vm_id: &str, key: &str) -> Option<SharedValue> {
        self.maps.get(self.map_key(vm_id))?.get(key).cloned()
    }

    pub(crate) fn len(&self, vm_id: &str) -> usize {
        self.maps.get(self.map_key(vm_id)).map_or(0, HashMap::len)
    }

    /// `proxy_set_shared_data`. `value` is `None` when the module passed a NULL pointer.
    pub(crate) fn set(&mut self, vm_id: &str, key: &str, value: Option<&[u8]>, cas: u32) -> Status {
        let profile = self.profile;
        let map_key = self.map_key(vm_id).to_string();
        let stored_cas = self.get(vm_id, key).map(|entry| entry.cas);
        let matches = match profile {
            Profile::Envoy => cas == 0 || stored_cas.is_none_or(|stored| stored == cas),
            Profile::Kong => cas == stored_cas.unwrap_or(0),
        };
        if !matches {
            return Status::CasMismatch;
        }
        if profile == Profile::Kong && value.is_none() {
            // ngx_wasm_module: a NULL value deletes the key.
            if let Some(map) = self.maps.get_mut(&map_key) {
                map.remove(key);
            }
            return Status::Ok;
        }
        let cas = self.next_cas();
        let entry = SharedValue { value: value.unwrap_or_default().to_vec(), cas };
        self.maps.entry(map_key).or_default().insert(key.to_string(), entry);
        Status::Ok
    }

    /// Sets without a CAS check (test setup).
    pub(crate) fn force_set(&mut self, vm_id: &str, key: &str, value: &[u8]) {
        let map_key = self.map_key(vm_id).to_string();
        let cas = self.next_cas();
        let entry = SharedValue { value: value.to_vec(), cas };
        self.maps.entry(map_key).or_default().insert(key.to_string(), entry);
    }

    /// `proxy_register_shared_queue`: the id of the queue `name` of `vm_id`, created if needed;
    /// registering again moves the ownership (as Envoy does) and keeps the items.
    pub(crate) fn register_queue(&mut self, vm_id: &str, name: &str, owner: (usize, u32)) -> u32 {
        if let Some(index) = self.queue_index(vm_id, name) {
            if let Some(queue) = self.queues.get_mut(index) {
                queue.owner = owner;
            }
            return queue_id(index);
        }
        self.queues.push(Queue { vm_id: vm_id.to_string(), name: name.to_string(), items: VecDeque::new(), owner });
        queue_id(self.queues.len() - 1)
    }

    pub(crate) fn resolve_queue(&self, vm_id: &str, name: &str) -> Option<u32> {
        self.queue_index(vm_id, name).map(queue_id)
    }

    fn queue_index(&self, vm_id: &str, name: &str) -> Option<usize> {
        self.queues.iter().position(|queue| queue.vm_id == vm_id && queue.name == name)
    }

    /// Returns the owner to notify, or `None` when the queue does not exist.
    pub(crate) fn enqueue(&mut self, id: u32, value: Vec<u8>) -> Option<(usize, u32)> {
        let queue = self.queues.get_mut(queue_index(id)?)?;
        queue.items.push_back(value);
        Some(queue.owner)
    }

    /// `Err(NotFound)` for an unknown queue, `Ok(None)` when empty.
    pub(crate) fn dequeue(&mut self, id: u32) -> Result<Option<Vec<u8>>, Status> {
        let queue = queue_index(id).and_then(|index| self.queues.get_mut(index)).ok_or(Status::NotFound)?;
        Ok(queue.items.pop_front())
    }
}

fn queue_id(index: usize) -> u32 {
    u32::try_from(index + 1).unwrap_or(u32::MAX)
}

fn queue_index(id: u32) -> Option<usize> {
    (id as usize).checked_sub(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envoy_cas_zero_overwrites_and_stale_cas_mismatches() {
        let mut store = SharedStore::new(Profile::Envoy);
        assert_eq!(store.set("vm", "k", Some(b"a"), 0), Status::Ok);
        let first = store.get("vm", "k").unwrap().cas;
        assert_eq!(store.set("vm", "k", Some(b"b"), 0), Status::Ok);
        assert_eq!(store.set("vm", "k", Some(b"c"), first), Status::CasMismatch);
        assert_eq!(store.get("vm", "k").unwrap().value, b"b");
        assert_eq!(store.get("other", "k"), None, "envoy keeps one map per vm_id");
    }

    #[test]
    fn kong_cas_zero_only_creates_and_null_deletes() {
        let mut store = SharedStore::new(Profile::Kong);
        assert_eq!(store.set("vm", "k", Some(b"a"), 0), Status::Ok);
        assert_eq!(store.set("vm", "k", Some(b"b"), 0), Status::CasMismatch);
        let cas = store.get("other", "k").unwrap().cas;
        assert_eq!(store.set("vm", "k", Some(b"c"), cas), Status::Ok);
        assert_eq!(store.set("vm", "missing", Some(b"x"), 7), Status::CasMismatch);
        let cas = store.get("vm", "k").unwrap().cas;
        assert_eq!(store.set("vm", "k", None, cas), Status::Ok);
        assert_eq!(store.get("vm", "k"), None);
    }
}
