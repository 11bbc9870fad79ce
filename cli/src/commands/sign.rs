//! `gatewarden sign --key KEYFILE --key-id ID POLICY`: adds (or replaces) ID's signature. The
//! signature covers the canonical JSON of the parsed document without `signatures`
//! (`gatewarden_policy::approvals`), so a YAML file and the JSON the filter receives sign the
//! same bytes; files the policy names (an OpenAPI `document_file`) are signed inlined, as the
//! filter receives them. Only a policy the filter accepts is signed.

use ed25519_compact::{KeyPair, Seed};
use gatewarden_policy::approvals::{decode_b64, encode_b64, signing_message};
use serde_json::{json, Value};

use crate::cli::FilterArg;
use crate::error::{load_status, CliError, CmdResult};
use crate::policy_doc::PolicyText;
use crate::policy_file::load;

#[derive(Debug, clap::Args)]
#[command(after_help = "Exit status: 0 signed, 1 invalid policy (not signed), 2 could not run.")]
pub struct Args {
    /// The private key written by `gatewarden keygen`.
    #[arg(long, value_name = "KEYFILE")]
    pub key: String,
    /// The signer's key id, as in the trust settings' `trusted_signers`.
    #[arg(long, value_name = "ID", value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub key_id: String,
    /// The policy file, edited in place (YAML keeps its comments).
    #[arg(value_name = "POLICY")]
    pub policy: String,
    #[command(flatten)]
    pub filter: FilterArg,
}

fn read_key(path: &str) -> Result<KeyPair, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: cannot read: {e}"))?;
    let seed =
        decode_b64(text.trim()).ok_or_else(|| format!("{path}: not a key written by `gatewarden keygen` (base64 of a 32-byte seed)"))?;
    let seed = Seed::from_slice(&seed).map_err(|_| format!("{path}: the seed is not 32 bytes"))?;
    Ok(KeyPair::from_seed(seed))
}

/// `gatewarden sign`.
pub fn run(a: &Args) -> CmdResult {
    let (file, key_id) = (a.policy.as_str(), a.key_id.as_str());
    let kp = read_key(&a.key).map_err(CliError::could_not_run)?;
    // Only a policy the filter accepts is worth approving.
    let loaded = load(file, a.filter.filter).map_err(|e| CliError::new(load_status(&e), format!("{file}: not signed: {e}")))?;
    let doc = PolicyText::read(file)?;
    // What the filter receives is signed: with the files the policy names inlined
    // (crate::include), so a changed OpenAPI file needs a new signature.
    let received: Value = serde_json::from_str(&loaded.json).map_err(|e| CliError::could_not_run(format!("{file}: {e}")))?;
    let message = signing_message(&received).map_err(|e| CliError::could_not_run(format!("{file}: {e}")))?;
    let sig = encode_b64(kp.sk.sign(&message, None).as_ref());
    let mut sigs: Vec<Value> = doc.value.get("signatures").and_then(Value::as_array).cloned().unwrap_or_default();
    sigs.retain(|s| s.get("key_id").and_then(Value::as_str) != Some(key_id));
    sigs.push(json!({"key_id": key_id, "sig": sig}));
    let mut new = doc.value.clone();
    if let Some(obj) = new.as_object_mut() {
        obj.insert("signatures".to_owned(), Value::Array(sigs.clone()));
    }
    let mut block = String::from("signatures:\n");
    for s in &sigs {
        let text = |k: &str| serde_json::to_string(s.get(k).unwrap_or(&Value::Null)).unwrap_or_default();
        block.push_str(&format!("  - key_id: {}\n    sig: {}\n", text("key_id"), text("sig")));
    }
    doc.write(&new, &["signatures"], Some(&block))?;
    eprintln!("{file}: signed by {key_id:?} ({} signature(s))", sigs.len());
    Ok(())
}
