//! Fetched OpenAPI documents (`openapi.source`): one [`RemoteResource`] per distinct origin
//! (resource `openapi`, the one remote-source type), started after the policy is accepted and
//! refreshed on its schedule. One worker fetches and publishes; every worker loads the published
//! copy on its next tick and compiles it for each rule that names that origin, with that rule's
//! options. A copy that does not compile for every one of its rules is refused (counted
//! `openapi_load_failed`) and the last good one keeps serving.
//!
//! ```text
//! on_policy ─ remote_documents() grouped by origin ─▶ Documents { fetchers, slot }
//!           ─ a copy this VM loaded before (same origin, earlier policy) ─▶ compiled into the slot now
//! on_tick / on_http_call_response ─ new copy ─ compile for each rule ─▶ slot (or refused)
//! start(policy, slot) ─ start_with(facts, |rule| slot[rule])
//! ```
//! The slot is the policy's [`Enforcer::PolicyState`](gatewarden_glue::Enforcer): the root
//! context fills it, requests of that policy read it. Why compiled copies are kept per policy,
//! not per origin: the resource registry outlives root contexts (an update with the same source
//! keeps the loaded copy), but a document compiles differently under another rule's options
//! (base path, unknown routes, limits), so an update recompiles the loaded bytes for its own
//! rules, in `on_policy`: no request of the new policy waits for a tick, and whether the policy
//! is accepted does not depend on it.
//!
//! A rollout's candidate policy gets an empty slot (its sources are not fetched): its OpenAPI
//! rules with `source` answer `document_unavailable` by the failure mode.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use gatewarden_glue::host::{self, Level};
use gatewarden_glue::remote::{RemoteResource, TICK_LOADED, TICK_LOADING};
use gatewarden_validate_policy::openapi::OpenApi;
use gatewarden_validate_policy::ValidatePolicy;

const FILTER: &str = "validate";

/// Compiled documents by rule index (`rules[i]` is `i`, the default `rules.len()`).
type ByRule = Vec<(usize, Arc<OpenApi>)>;

/// The fetched documents of one policy, filled by its root context, read by its requests.
#[derive(Default, Clone)]
pub struct Slot(Rc<RefCell<ByRule>>);

impl Slot {
    /// The document of rule `rule`, when one is loaded.
    pub fn get(&self, rule: usize) -> Option<Arc<OpenApi>> {
        let docs = self.0.try_borrow().ok()?;
        docs.iter().find(|(r, _)| *r == rule).map(|(_, d)| Arc::clone(d))
    }

    fn set(&self, compiled: ByRule) {
        if let Ok(mut docs) = self.0.try_borrow_mut() {
            docs.retain(|(r, _)| !compiled.iter().any(|(c, _)| c == r));
            docs.extend(compiled);
        }
    }
}

thread_local! {
    /// The slot `on_policy` made, until `policy_state` hands it to the same policy: (the policy's
    /// address at that time, the slot). `on_configure` calls both on the policy before it moves
    /// into the glue's `Rc`, so the address tells the active policy from a rollout candidate.
    static PENDING: RefCell<Option<(usize, Slot)>> = const { RefCell::new(None) };
    /// Numbers the policies of this VM: a published copy compiled under another one is recompiled.
    static SERIAL: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

fn address(policy: &ValidatePolicy) -> usize {
    std::ptr::from_ref(policy) as usize
}

/// The slot of a policy accepted just now (`Enforcer::policy_state`): the one `on_policy`
/// filled for it, or an empty one (a rollout candidate, a policy without fetched documents).
pub fn slot_for(policy: &ValidatePolicy) -> Slot {
    PENDING
        .with(|p| {
            let mut p = p.try_borrow_mut().ok()?;
            match p.take() {
                Some((addr, slot)) if addr == address(policy) => Some(slot),
                other => {
                    *p = other;
                    None
                }
            }
        })
        .unwrap_or_default()
}

/// A published copy of one origin's document: its bytes, and its compiled form for the policy
/// numbered `serial`.
struct Published {
    bytes: Vec<u8>,
    serial: u64,
    compiled: ByRule,
}

/// One remote origin and the rules that use it.
struct Fetcher {
    resource: RemoteResource,
    rules: Vec<usize>,
}

/// The fetched documents of one root context (one accepted policy).
#[derive(Default)]
pub struct Documents {
    fetchers: Vec<Fetcher>,
    /// A copy of the policy, to compile fetched text with its rules' options (the glue lends
    /// the policy to `on_tick` only, not to `on_http_call_response`).
    policy: Option<ValidatePolicy>,
    serial: u64,
    slot: Slot,
}

/// Compiles `bytes` for each of `rules`: every rule's compile must succeed.
fn compile_all(policy: &ValidatePolicy, rules: &[usize], bytes: &[u8]) -> Result<ByRule, String> {
    let mut by_rule = Vec::with_capacity(rules.len());
    for &rule in rules {
        let doc = policy.compile_document(rule, bytes).map_err(|e| e.to_string())?;
        by_rule.push((rule, Arc::new(doc)));
    }
    Ok(by_rule)
}

impl Documents {
    /// The documents of `policy` (accepted just now): fetchers per origin, copies this VM
    /// already loaded compiled into the new slot. Returns the tick period wanted, if any.
    pub fn on_policy(&mut self, policy: &ValidatePolicy) -> Option<std::time::Duration> {
        let serial = SERIAL.with(|s| {
            s.set(s.get().wrapping_add(1));
            s.get()
        });
        let mut fetchers: Vec<Fetcher> = Vec::new();
        for d in policy.remote_documents() {
            if let Some(f) = fetchers.iter_mut().find(|f| f.resource.source().same_origin(d.source)) {
                f.rules.push(d.rule);
                continue;
            }
            fetchers.push(Fetcher { resource: RemoteResource::new(FILTER, d.source.clone()), rules: vec![d.rule] });
        }
        for f in &mut fetchers {
            let subject = format!(" of {}", rule_names(&f.rules));
            f.resource.set_subject(subject);
        }
        let slot = Slot::default();
        PENDING.with(|p| {
            if let Ok(mut p) = p.try_borrow_mut() {
                *p = Some((address(policy), slot.clone()));
            }
        });
        *self = Documents { policy: (!fetchers.is_empty()).then(|| policy.clone()), fetchers, serial, slot };
        let mut all_loaded = true;
        for i in 0..self.fetchers.len() {
            all_loaded &= self.install(i);
        }
        match (self.fetchers.is_empty(), all_loaded) {
            (true, _) => None,
            (false, true) => Some(TICK_LOADED),
            (false, false) => Some(TICK_LOADING),
        }
    }

    /// Installs the copy of fetcher `i`'s origin this VM loaded, compiling it for this policy
    /// when another one compiled it. Returns whether one is installed.
    fn install(&self, i: usize) -> bool {
        let (Some(f), Some(policy)) = (self.fetchers.get(i), &self.policy) else { return false };
        let Some(published) = f.resource.current::<Published>() else { return false };
        let compiled = if published.serial == self.serial {
            published.compiled.clone()
        } else {
            match compile_all(policy, &f.rules, &published.bytes) {
                Ok(c) => c,
                Err(why) => {
                    let names = rule_names(&f.rules);
                    host::log(
                        Level::Warn,
                        format_args!("gatewarden {FILTER}: the loaded OpenAPI document of {names} does not compile for this policy: {why}"),
                    );
                    return false;
                }
            }
        };
        self.slot.set(compiled);
        true
    }

    /// Loads newly published copies and runs the fetch schedules.
    pub fn on_tick(&mut self) -> Option<std::time::Duration> {
        let policy = self.policy.as_ref()?;
        let now = host::now_ms();
        let mut fresh = Vec::new();
        for (i, f) in self.fetchers.iter_mut().enumerate() {
            if f.resource.load_published(parse(policy, self.serial, &f.rules)).is_some() {
                fresh.push(i);
            }
            f.resource.tick(now);
        }
        for i in fresh {
            self.install(i);
        }
        let all_loaded = self.fetchers.iter().all(|f| f.rules.iter().all(|r| self.slot.get(*r).is_some()));
        Some(if all_loaded { TICK_LOADED } else { TICK_LOADING })
    }

    /// A callout answered: if it fetched one of our documents, publish and install it.
    pub fn on_http_call_response(&mut self, token: u32, body_size: usize) {
        let Some(policy) = &self.policy else { return };
        let now = host::now_ms();
        let mut answered = None;
        for (i, f) in self.fetchers.iter_mut().enumerate() {
            if let Some(loaded) = f.resource.on_response(token, body_size, now, parse(policy, self.serial, &f.rules)) {
                answered = loaded.is_some().then_some(i);
                break;
            }
        }
        if let Some(i) = answered {
            self.install(i);
        }
    }
}

/// Compiles a published copy for `rules` of `policy` (numbered `serial`): the copy, and the log
/// line's description.
fn parse<'a>(
    policy: &'a ValidatePolicy,
    serial: u64,
    rules: &'a [usize],
) -> impl FnOnce(&[u8]) -> Result<(Published, String), String> + 'a {
    move |bytes| {
        let compiled = compile_all(policy, rules, bytes)?;
        let about = format!("for {} ({} bytes)", rule_names(rules), bytes.len());
        Ok((Published { bytes: bytes.to_vec(), serial, compiled }, about))
    }
}

/// `rule 0, rule 2` for log lines.
fn rule_names(rules: &[usize]) -> String {
    rules.iter().map(|r| format!("rule {r}")).collect::<Vec<_>>().join(", ")
}
