//! `gatewarden keygen | sign | verify`: approvals of policy documents (Ed25519).
//!
//! ```text
//! gatewarden keygen --out PREFIX                          PREFIX.key (seed, mode 0600) and PREFIX.pub
//! gatewarden sign --key KEYFILE --key-id ID [--filter NAME] POLICY   adds or replaces ID's signature
//! gatewarden verify --trust TRUST.json [--filter NAME] POLICY        exit 0 enough signatures, 1 not, 2 could not run
//! ```
//! The signature covers the canonical JSON of the parsed document without `signatures`
//! (`gatewarden_policy::approvals`), so a YAML file and the JSON the filter receives sign the
//! same bytes; `verify` runs the filter's own check on that JSON.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use ed25519_compact::{KeyPair, Seed};
use gatewarden_policy::approvals::{decode_b64, encode_b64, signing_message, TrustConfig};
use serde_json::{json, Value};

use crate::policy_file::{load, Filter};

/// Whether a policy file is YAML or JSON (by extension, as `policy_file::load` reads it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Yaml,
}

/// A policy file as text and as a parsed document.
pub struct PolicyText {
    pub path: String,
    pub text: String,
    pub format: Format,
    pub value: Value,
}

impl PolicyText {
    pub fn read(path: &str) -> Result<Self, (u8, String)> {
        let text = fs::read_to_string(path).map_err(|e| (2, format!("{path}: cannot read: {e}")))?;
        let format = if path.ends_with(".json") { Format::Json } else { Format::Yaml };
        let value = parse(&text, format).map_err(|e| (1, format!("{path}: {e}")))?;
        if !value.is_object() {
            return Err((1, format!("{path}: a policy document is a mapping of fields")));
        }
        Ok(Self { path: path.to_owned(), text, format, value })
    }

    /// Writes `new` in the file's format, atomically (temp file + rename). YAML: when the only
    /// change is removing top-level keys (`remove`) and appending a block (`append`), the text is
    /// edited so comments and layout stay; otherwise the document is written anew.
    pub fn write(&self, new: &Value, remove: &[&str], append: Option<&str>) -> Result<(), String> {
        let out = match self.format {
            Format::Json => serde_json::to_string_pretty(new).map_err(|e| e.to_string())? + "\n",
            Format::Yaml => {
                let mut text = self.text.clone();
                for key in remove {
                    text = remove_top_level_yaml(&text, key);
                }
                if let Some(block) = append {
                    if !text.is_empty() && !text.ends_with('\n') {
                        text.push('\n');
                    }
                    text.push_str(block);
                }
                if parse(&text, Format::Yaml).ok().as_ref() == Some(new) {
                    text
                } else {
                    serde_norway::to_string(new).map_err(|e| e.to_string())?
                }
            }
        };
        write_atomic(Path::new(&self.path), out.as_bytes(), None).map_err(|e| format!("{}: cannot write: {e}", self.path))
    }
}

fn parse(text: &str, format: Format) -> Result<Value, String> {
    match format {
        Format::Json => serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}")),
        Format::Yaml => serde_norway::from_str(text).map_err(|e| format!("not valid YAML: {e}")),
    }
}

/// Removes the block of top-level key `key` (its line and the indented or `- ` lines after it).
pub fn remove_top_level_yaml(text: &str, key: &str) -> String {
    let head = format!("{key}:");
    let mut out = String::with_capacity(text.len());
    let mut skipping = false;
    for line in text.split_inclusive('\n') {
        if line.starts_with(&head) {
            skipping = true;
            continue;
        }
        if skipping {
            let continues = line.trim().is_empty() || line.starts_with(' ') || line.starts_with('\t') || line.starts_with('-');
            if continues {
                continue;
            }
            skipping = false;
        }
        out.push_str(line);
    }
    out
}

/// Writes `bytes` to `path` through a temp file in the same directory and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: Option<u32>) -> std::io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("policy");
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    {
        let mut opts = fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(mode.unwrap_or(0o644));
        }
        let mut f = opts.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

fn take_value(args: &mut Vec<String>, name: &str) -> Result<Option<String>, String> {
    match args.iter().position(|a| a == name) {
        None => Ok(None),
        Some(i) => {
            if i + 1 >= args.len() {
                return Err(format!("{name} needs a value"));
            }
            let v = args.remove(i + 1);
            args.remove(i);
            Ok(Some(v))
        }
    }
}

fn take_filter(args: &mut Vec<String>) -> Result<Option<Filter>, String> {
    take_value(args, "--filter")?
        .map(|n| Filter::parse(&n))
        .transpose()
}

fn one_file(args: &[String], cmd: &str) -> Result<String, String> {
    match args {
        [f] if !f.starts_with("--") => Ok(f.clone()),
        _ => Err(format!("{cmd} takes one policy file (got {args:?})")),
    }
}

fn fail(code: u8, msg: &str) -> Result<ExitCode, String> {
    eprintln!("{msg}");
    Ok(ExitCode::from(code))
}

/// `gatewarden keygen --out PREFIX`
pub fn keygen(args: &[String]) -> Result<ExitCode, String> {
    let mut args = args.to_vec();
    let prefix = take_value(&mut args, "--out")?.ok_or("keygen needs --out PREFIX")?;
    if !args.is_empty() {
        return Err(format!("keygen: unexpected {args:?}"));
    }
    let (key_path, pub_path) = (format!("{prefix}.key"), format!("{prefix}.pub"));
    for p in [&key_path, &pub_path] {
        if Path::new(p).exists() {
            return fail(2, &format!("{p}: exists; not overwriting a key"));
        }
    }
    let mut seed = [0u8; 32];
    let mut f = fs::File::open("/dev/urandom").map_err(|e| format!("/dev/urandom: {e}"))?;
    std::io::Read::read_exact(&mut f, &mut seed).map_err(|e| format!("/dev/urandom: {e}"))?;
    let kp = KeyPair::from_seed(Seed::new(seed));
    if let Err(e) = write_atomic(Path::new(&key_path), format!("{}\n", encode_b64(&seed)).as_bytes(), Some(0o600)) {
        return fail(2, &format!("{key_path}: cannot write: {e}"));
    }
    let public = encode_b64(kp.pk.as_ref());
    if let Err(e) = write_atomic(Path::new(&pub_path), format!("{public}\n").as_bytes(), None) {
        return fail(2, &format!("{pub_path}: cannot write: {e}"));
    }
    let key_id = Path::new(&prefix).file_name().and_then(|n| n.to_str()).unwrap_or("signer");
    eprintln!("wrote {key_path} (private, mode 0600) and {pub_path}; trusted_signers entry:");
    println!("{}", json!({"key_id": key_id, "public_key": public}));
    Ok(ExitCode::SUCCESS)
}

fn read_key(path: &str) -> Result<KeyPair, String> {
    let text = fs::read_to_string(path).map_err(|e| format!("{path}: cannot read: {e}"))?;
    let seed = decode_b64(text.trim()).ok_or_else(|| format!("{path}: not a key written by `gatewarden keygen` (base64 of a 32-byte seed)"))?;
    let seed = Seed::from_slice(&seed).map_err(|_| format!("{path}: the seed is not 32 bytes"))?;
    Ok(KeyPair::from_seed(seed))
}

/// `gatewarden sign --key KEYFILE --key-id ID POLICY`
pub fn sign(args: &[String]) -> Result<ExitCode, String> {
    let mut args = args.to_vec();
    let key = take_value(&mut args, "--key")?.ok_or("sign needs --key KEYFILE")?;
    let key_id = take_value(&mut args, "--key-id")?.ok_or("sign needs --key-id ID")?;
    let filter = take_filter(&mut args)?;
    let file = one_file(&args, "sign")?;
    if key_id.is_empty() {
        return Err("--key-id is empty".into());
    }
    let kp = match read_key(&key) {
        Ok(k) => k,
        Err(e) => return fail(2, &e),
    };
    // Only a policy the filter accepts is worth approving.
    if let Err(e) = load(&file, filter) {
        return fail(if e.is_invalid() { 1 } else { 2 }, &format!("{file}: not signed: {e}"));
    }
    let doc = match PolicyText::read(&file) {
        Ok(d) => d,
        Err((code, msg)) => return fail(code, &msg),
    };
    let message = signing_message(&doc.value).map_err(|e| e.to_string())?;
    let sig = encode_b64(kp.sk.sign(&message, None).as_ref());
    let mut sigs: Vec<Value> = doc.value.get("signatures").and_then(Value::as_array).cloned().unwrap_or_default();
    sigs.retain(|s| s.get("key_id").and_then(Value::as_str) != Some(key_id.as_str()));
    sigs.push(json!({"key_id": key_id, "sig": sig}));
    let mut new = doc.value.clone();
    if let Some(obj) = new.as_object_mut() {
        obj.insert("signatures".to_owned(), Value::Array(sigs.clone()));
    }
    let mut block = String::from("signatures:\n");
    for s in &sigs {
        let k = serde_json::to_string(s.get("key_id").unwrap_or(&Value::Null)).map_err(|e| e.to_string())?;
        let v = serde_json::to_string(s.get("sig").unwrap_or(&Value::Null)).map_err(|e| e.to_string())?;
        block.push_str(&format!("  - key_id: {k}\n    sig: {v}\n"));
    }
    doc.write(&new, &["signatures"], Some(&block))?;
    eprintln!("{file}: signed by {key_id:?} ({} signature(s))", sigs.len());
    Ok(ExitCode::SUCCESS)
}

/// `gatewarden verify --trust TRUST.json POLICY`: the filter's own check.
pub fn verify(args: &[String]) -> Result<ExitCode, String> {
    let mut args = args.to_vec();
    let trust_path = take_value(&mut args, "--trust")?.ok_or("verify needs --trust TRUST.json")?;
    let filter = take_filter(&mut args)?;
    let file = one_file(&args, "verify")?;
    let trust = match fs::read(&trust_path) {
        Ok(bytes) => match TrustConfig::parse(&bytes) {
            Ok(t) => t,
            Err(e) => return fail(2, &format!("{trust_path}: invalid trust settings: {e}")),
        },
        Err(e) => return fail(2, &format!("{trust_path}: cannot read: {e}")),
    };
    let policy = match load(&file, filter) {
        Ok(p) => p,
        Err(e) => return fail(if e.is_invalid() { 1 } else { 2 }, &format!("{file}: {e}")),
    };
    let checked = trust.check(policy.json.as_bytes()).map_err(|e| e.to_string())?;
    for k in &checked.valid {
        println!("{file}: valid signature by {k:?}");
    }
    for r in &checked.rejected {
        println!("{file}: not counted: {r}");
    }
    match trust.verify(policy.json.as_bytes()) {
        Ok(_) => {
            println!("{file}: approved ({} of {} required signatures)", checked.valid.len(), trust.required());
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => fail(1, &format!("{file}: would be refused: {e}")),
    }
}
