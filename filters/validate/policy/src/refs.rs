//! Schemas that apply in place of each other, bounded before anything validates: one check for a
//! plain rule's `body_schema` (and its parameter schemas) and for an OpenAPI document's schemas.
//!
//! Validating recurses once per schema applied to the same value (`$ref`, the items of `allOf`,
//! `anyOf`, `oneOf`, `not`, `if`, `then`, `else`, the values of `dependentSchemas` and of
//! draft 4–7 `dependencies`) without descending into the body; only `properties`, `items` and
//! their kind descend, and serde_json bounds a body's nesting at 128. The stack a body needs is
//! about its depth × the in-place steps at each level. A chain of 5,000 `$defs` each `allOf` the
//! next overflowed the native stack while validating (in a Wasm VM: a trap). Over the graph of
//! schema locations whose edges are those in-place applications:
//! - a cycle (`{"allOf": [{"$ref": "#"}]}`, `A: {$ref: B}, B: {$ref: A}`) is a configuration
//!   error at the `$ref` that closes it. jsonschema 0.61 does not loop on one (a node met again
//!   for the same value answers "valid"), so a cycle constrains nothing past its first pass: it
//!   means what the library happens to do, and the bound below would depend on that guard;
//! - a path through more than [`MAX_IN_PLACE_REFS`] `$ref`s, or more than [`MAX_IN_PLACE_DEPTH`]
//!   in-place steps (inline nesting counts: `{"allOf": [{"not": {…}}]}` is two), is a
//!   configuration error at the schema where the over-long part starts;
//! - what cannot be resolved before validation is refused at its path: `$dynamicRef` and
//!   `$recursiveRef` (their target depends on the path taken at validation time), and for a plain
//!   schema a `$ref` that is not a JSON pointer into the schema itself (`#`, `#/$defs/…`: no
//!   anchors, no absolute URIs, not even the meta-schemas jsonschema bundles), and a nested
//!   `$id` / `id` (it would change what `#/…` below it means; the root's is fine).
//!
//! `$ref`s inside data (`const`, `enum`, `default`, `examples`) or unknown keywords are not
//! references and are not followed. Recursion through `properties`, `items`, … is fine: a tree,
//! a linked list, a schema reused from many places. Walking and the longest-path search are
//! iterative (the chain may be long): the 5,000-link chain is refused in 0.7 s (debug build).
//!
//! # Why 4 and 9 (measured 2026-12-03, the release module in wasm-host's Wasmtime, 512 KiB Wasm
//! stack, Envoy profile; a body 127 levels deep, each level `c` through a `$defs` chain)
//! | chain at each level | valid body | invalid body (errors listed) |
//! |---|---|---|
//! | `allOf`, 23 steps (11 `$ref`s) | ok | ok |
//! | `allOf`, 27 steps | ok | trap |
//! | `oneOf`, 15 steps | ok | ok |
//! | `oneOf`, 17 steps | ok | trap |
//! | `allOf`, 31 steps (the OpenAPI bound before, 16 `$ref`s) | trap | trap |
//!
//! The bound keeps about half of the cheapest failure (9 of 17 steps); chains through `not`,
//! `if`/`then`, `dependentSchemas` (13 steps), bare `$ref`s (7) and `allOf` with
//! `unevaluatedProperties: false` (13) passed both bodies as well. Natively (debug build, 2 MiB test thread) the listed errors of 127 levels × 16 `$ref`s
//! needed more than 4 MiB. 4 `$ref`s still allow a body `$ref` to a schema that is `allOf` a
//! base that is `allOf` another (the example orders API compiles).

use std::collections::HashMap;

use percent_encoding::percent_decode_str;
use serde_json::Value;

use gatewarden_policy::error::{quote, ConfigError, FieldPath};

use crate::openapi::pointer::{field_path, get, key, locate, pointer, split_pointer, Loc, Tok};

/// The most `$ref`s in a chain of schemas applying in place of each other.
pub const MAX_IN_PLACE_REFS: usize = 4;
/// The most in-place steps (`$ref`s and inline `allOf`/`anyOf`/`oneOf`/`not`/`if`/`then`/`else`/
/// `dependentSchemas` nesting) from one schema before the body is descended into.
pub const MAX_IN_PLACE_DEPTH: usize = 2 * MAX_IN_PLACE_REFS + 1;

/// Keywords whose value is one schema applied to the same value.
const IN_PLACE_ONE: [&str; 4] = ["not", "if", "then", "else"];
/// Keywords whose value is a list of schemas applied to the same value.
const IN_PLACE_LIST: [&str; 3] = ["allOf", "anyOf", "oneOf"];
/// Keywords whose value maps names to schemas applied to the same value (draft 4–7
/// `dependencies` also maps names to lists of names: those are not schemas).
const IN_PLACE_MAP: [&str; 2] = ["dependentSchemas", "dependencies"];
/// Keywords whose schema (or schemas) apply to a part of the value.
const DESCEND_ONE: [&str; 8] = [
    "additionalProperties",
    "contains",
    "propertyNames",
    "unevaluatedItems",
    "unevaluatedProperties",
    "additionalItems",
    "contentSchema",
    "items",
];
const DESCEND_LIST: [&str; 2] = ["prefixItems", "items"];
const DESCEND_MAP: [&str; 2] = ["properties", "patternProperties"];
/// References resolved only while validating.
const DYNAMIC: [&str; 2] = ["$dynamicRef", "$recursiveRef"];

/// Where `$ref`s point.
pub(crate) enum Resolve<'a> {
    /// A plain schema: `#` or `#/…` into the schema itself; nested `$id`s are refused.
    Plain,
    /// A document whose `$ref`s were checked and made absolute: the closure gives the target's
    /// pointer tokens, or why not.
    Document(&'a dyn Fn(&str) -> Result<Vec<String>, String>),
}

/// Refuses a cycle or an over-long chain of schemas applying in place of each other, reached from
/// the schemas at `roots` in `doc` (found at `base` in the policy).
pub(crate) fn check_in_place(doc: &Value, roots: &[Loc], resolve: &Resolve<'_>, base: &FieldPath) -> Result<(), ConfigError> {
    let graph = Graph::build(doc, roots, resolve, base)?;
    graph.longest_paths(base)
}

/// One in-place application: the schema applied, whether through a `$ref`, and where written.
struct Edge {
    to: usize,
    is_ref: bool,
    at: Loc,
}

struct Graph {
    locs: Vec<Loc>,
    edges: Vec<Vec<Edge>>,
}

impl Graph {
    fn build(doc: &Value, roots: &[Loc], resolve: &Resolve<'_>, base: &FieldPath) -> Result<Self, ConfigError> {
        let mut g = Graph { locs: Vec::new(), edges: Vec::new() };
        let mut ids: HashMap<String, usize> = HashMap::new();
        let mut queue: Vec<usize> = Vec::new();
        let mut node = |g: &mut Graph, queue: &mut Vec<usize>, loc: Loc| -> usize {
            let id = pointer(&loc);
            if let Some(&i) = ids.get(&id) {
                return i;
            }
            let i = g.locs.len();
            ids.insert(id, i);
            g.locs.push(loc);
            g.edges.push(Vec::new());
            queue.push(i);
            i
        };
        for r in roots {
            node(&mut g, &mut queue, r.clone());
        }
        while let Some(i) = queue.pop() {
            let Some(loc) = g.locs.get(i).cloned() else { continue };
            let Some(Value::Object(map)) = get(doc, &loc) else { continue };
            let mut edges = Vec::new();
            for (k, v) in map {
                let k = k.as_str();
                let here = key(&loc, k);
                if DYNAMIC.contains(&k) {
                    return Err(field_path(base, &here).error(format!(
                        "{k} {} is not supported: its target depends on the path validation takes, so the recursion cannot be bounded in advance; use $ref",
                        quoted(v)
                    )));
                }
                if k == "$ref" {
                    let Value::String(r) = v else { continue };
                    let target =
                        target_of(doc, r, resolve).map_err(|why| field_path(base, &here).error(format!("$ref {}: {why}", quote(r))))?;
                    let to = node(&mut g, &mut queue, target);
                    edges.push(Edge { to, is_ref: true, at: here });
                    continue;
                }
                if matches!(resolve, Resolve::Plain) && (k == "$id" || k == "id") && !loc.is_empty() && v.is_string() {
                    return Err(field_path(base, &here).error(format!(
                        "a nested {k} ({}) is not supported in a body schema: it changes what the $refs below it name; keep the schema in one resource ($defs and #/… references)",
                        quoted(v)
                    )));
                }
                for child in children(k, v, &here) {
                    match child {
                        Child::InPlace(c) => {
                            let to = node(&mut g, &mut queue, c.clone());
                            edges.push(Edge { to, is_ref: false, at: c });
                        }
                        Child::Descend(c) => {
                            node(&mut g, &mut queue, c);
                        }
                    }
                }
            }
            if let Some(slot) = g.edges.get_mut(i) {
                *slot = edges;
            }
        }
        Ok(g)
    }

    /// Per node the most `$ref`s and steps on an in-place path from it; a cycle is an error at
    /// the `$ref` closing it. Iterative depth-first search.
    fn longest_paths(&self, base: &FieldPath) -> Result<(), ConfigError> {
        let n = self.locs.len();
        // (refs, steps) once finished.
        let mut depth: Vec<Option<(usize, usize)>> = vec![None; n];
        let mut active = vec![false; n];
        for start in 0..n {
            if depth.get(start).copied().flatten().is_some() {
                continue;
            }
            let mut stack = vec![(start, 0usize)];
            set(&mut active, start, true);
            while let Some(&(v, next)) = stack.last() {
                let edges = self.edges.get(v).map(Vec::as_slice).unwrap_or_default();
                if let Some(e) = edges.get(next) {
                    if let Some(top) = stack.last_mut() {
                        top.1 += 1;
                    }
                    if active.get(e.to).copied().unwrap_or(false) {
                        return Err(field_path(base, &e.at).error(
                            "closes a cycle of schemas applying in place of each other (allOf, anyOf, oneOf, not, if/then/else, dependentSchemas or a bare $ref) without descending into the body: validating it would never end",
                        ));
                    }
                    if depth.get(e.to).copied().flatten().is_none() {
                        set(&mut active, e.to, true);
                        stack.push((e.to, 0));
                    }
                    continue;
                }
                let mut refs = 0;
                let mut steps = 0;
                for e in edges {
                    let (r, s) = depth.get(e.to).copied().flatten().unwrap_or((0, 0));
                    refs = refs.max(r + usize::from(e.is_ref));
                    steps = steps.max(s + 1);
                }
                let at = || self.locs.get(v).map(|l| field_path(base, l)).unwrap_or_else(|| base.clone());
                if refs > MAX_IN_PLACE_REFS {
                    return Err(at().error(format!("a chain of more than {MAX_IN_PLACE_REFS} in-place $refs (allOf, anyOf, oneOf, not, if/then/else or a bare $ref) starts here: not supported")));
                }
                if steps > MAX_IN_PLACE_DEPTH {
                    return Err(at().error(format!("more than {MAX_IN_PLACE_DEPTH} schemas nested in place of each other (allOf, anyOf, oneOf, not, if/then/else, dependentSchemas, $ref) start here: not supported")));
                }
                if let Some(slot) = depth.get_mut(v) {
                    *slot = Some((refs, steps));
                }
                set(&mut active, v, false);
                stack.pop();
            }
        }
        Ok(())
    }
}

/// A keyword's value quoted as the user wrote it.
fn quoted(v: &Value) -> String {
    match v {
        Value::String(s) => quote(s),
        other => quote(&other.to_string()),
    }
}

fn set(flags: &mut [bool], i: usize, to: bool) {
    if let Some(f) = flags.get_mut(i) {
        *f = to;
    }
}

enum Child {
    InPlace(Loc),
    Descend(Loc),
}

/// The subschemas of keyword `k` (value `v`, at `here`).
fn children(k: &str, v: &Value, here: &Loc) -> Vec<Child> {
    let index = |i: usize| {
        let mut l = here.clone();
        l.push(Tok::Index(i));
        l
    };
    let schemas_of_map = |m: &serde_json::Map<String, Value>| -> Vec<Loc> {
        m.iter().filter(|(_, s)| s.is_object() || s.is_boolean()).map(|(name, _)| key(here, name)).collect()
    };
    match v {
        Value::Object(_) if IN_PLACE_ONE.contains(&k) => vec![Child::InPlace(here.clone())],
        Value::Array(items) if IN_PLACE_LIST.contains(&k) => (0..items.len()).map(|i| Child::InPlace(index(i))).collect(),
        Value::Object(m) if IN_PLACE_MAP.contains(&k) => schemas_of_map(m).into_iter().map(Child::InPlace).collect(),
        Value::Object(_) if DESCEND_ONE.contains(&k) => vec![Child::Descend(here.clone())],
        Value::Array(items) if DESCEND_LIST.contains(&k) => (0..items.len()).map(|i| Child::Descend(index(i))).collect(),
        Value::Object(m) if DESCEND_MAP.contains(&k) => schemas_of_map(m).into_iter().map(Child::Descend).collect(),
        _ => Vec::new(),
    }
}

/// The location a `$ref` names.
fn target_of(doc: &Value, r: &str, resolve: &Resolve<'_>) -> Result<Loc, String> {
    let tokens = match resolve {
        Resolve::Document(f) => f(r)?,
        Resolve::Plain => {
            let fragment = r.strip_prefix('#').ok_or_else(|| {
                "only references inside the schema (# or #/…, e.g. #/$defs/item) are supported: it would be loaded from elsewhere"
                    .to_owned()
            })?;
            let decoded = percent_decode_str(fragment).decode_utf8().map_err(|_| "the fragment is not UTF-8".to_owned())?;
            if !decoded.is_empty() && !decoded.starts_with('/') {
                return Err("anchors are not supported: use a JSON pointer (#/$defs/…)".to_owned());
            }
            split_pointer(&decoded)
        }
    };
    locate(doc, &tokens).ok_or_else(|| "names nothing in the schema".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn plain(schema: Value) -> Result<(), String> {
        check_in_place(&schema, &[Vec::new()], &Resolve::Plain, &FieldPath::root().field("s")).map_err(|e| e.to_string())
    }

    #[test]
    fn self_reference_in_place_is_a_cycle_descending_is_not() {
        assert!(plain(json!({"allOf": [{"$ref": "#"}]})).unwrap_err().starts_with("s.allOf[0].$ref: closes a cycle"));
        assert!(plain(json!({"properties": {"a": {"$ref": "#"}}, "items": {"$ref": "#"}})).is_ok());
    }

    #[test]
    fn steps_count_inline_nesting() {
        let mut s = json!({"type": "integer"});
        for _ in 0..MAX_IN_PLACE_DEPTH {
            s = json!({"not": {"not": s}});
        }
        assert!(plain(s).unwrap_err().contains("more than 9 schemas nested"));
    }
}
