//! `gatewarden keygen --out PREFIX`: an Ed25519 key pair for approving policies: `PREFIX.key`
//! (the seed, mode 0600) and `PREFIX.pub`; prints the `trusted_signers` entry for the trust
//! settings.

use std::path::Path;

use ed25519_compact::{KeyPair, Seed};
use gatewarden_policy::approvals::encode_b64;
use serde_json::json;

use crate::atomic::{write_atomic, write_atomic_mode};
use crate::error::{CliError, CmdResult};

#[derive(Debug, clap::Args)]
#[command(after_help = "The key id of the printed entry is PREFIX's file name. An existing key is never overwritten \
                        (exit 2).")]
pub struct Args {
    /// Writes PREFIX.key (private, mode 0600) and PREFIX.pub.
    #[arg(long, value_name = "PREFIX")]
    pub out: String,
}

/// `gatewarden keygen`.
pub fn run(a: &Args) -> CmdResult {
    let prefix = &a.out;
    let (key_path, pub_path) = (format!("{prefix}.key"), format!("{prefix}.pub"));
    for p in [&key_path, &pub_path] {
        if Path::new(p).exists() {
            return Err(CliError::could_not_run(format!("{p}: exists; not overwriting a key")));
        }
    }
    let mut seed = [0u8; 32];
    let urandom = |e: std::io::Error| CliError::could_not_run(format!("/dev/urandom: {e}"));
    let mut f = std::fs::File::open("/dev/urandom").map_err(urandom)?;
    std::io::Read::read_exact(&mut f, &mut seed).map_err(urandom)?;
    let kp = KeyPair::from_seed(Seed::new(seed));
    write_atomic_mode(Path::new(&key_path), format!("{}\n", encode_b64(&seed)).as_bytes(), 0o600)
        .map_err(|e| CliError::could_not_run(format!("{key_path}: cannot write: {e}")))?;
    let public = encode_b64(kp.pk.as_ref());
    write_atomic(Path::new(&pub_path), format!("{public}\n").as_bytes())
        .map_err(|e| CliError::could_not_run(format!("{pub_path}: cannot write: {e}")))?;
    let key_id = Path::new(prefix).file_name().and_then(|n| n.to_str()).unwrap_or("signer");
    eprintln!("wrote {key_path} (private, mode 0600) and {pub_path}; trusted_signers entry:");
    println!("{}", json!({"key_id": key_id, "public_key": public}));
    Ok(())
}
