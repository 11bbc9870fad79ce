//! `gatewarden geo-lookup DB.mmdb IP...`: the country the database gives each address, read with
//! the IP/geo filter's own code.

use crate::error::{CliError, CmdResult};

#[derive(Debug, clap::Args)]
#[command(after_help = "Prints `IP<TAB>CC` a line (`unknown` when the database has no country). \
                        Exit status: 0 printed, 1 not a database the filter can read, 2 unreadable file or bad address.")]
pub struct Args {
    /// A MaxMind-format database (.mmdb).
    #[arg(value_name = "DB.mmdb")]
    pub db: String,
    /// IPv4 or IPv6 addresses.
    #[arg(value_name = "IP", required = true)]
    pub ips: Vec<String>,
}

pub fn run(a: &Args) -> CmdResult {
    let db = &a.db;
    let bytes = std::fs::read(db).map_err(|e| CliError::could_not_run(format!("{db}: cannot read: {e}")))?;
    let geo = gatewarden_ip_geo_policy::GeoDb::from_bytes(bytes).map_err(|e| CliError::failed(format!("{db}: {e}")))?;
    for ip in &a.ips {
        let addr =
            gatewarden_policy::cidr::parse_address(ip).ok_or_else(|| CliError::usage("geo-lookup", format!("not an address: {ip:?}")))?;
        match geo.country(addr) {
            Ok(Some(cc)) => println!("{ip}\t{cc}"),
            Ok(None) => println!("{ip}\tunknown"),
            Err(e) => println!("{ip}\terror: {e}"),
        }
    }
    Ok(())
}
