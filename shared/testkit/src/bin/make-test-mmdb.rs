//! `make-test-mmdb`: writes MaxMind DB fixtures for end-to-end tests.
//!
//! ```text
//! make-test-mmdb OUT.mmdb [--layout country_code|geoip2] [--ip-version 6|4]
//!                [--record-size 24|28|32] [--database-type NAME] [--build-epoch SECS]
//!                [--corrupt] [NET=CC ...]
//! make-test-mmdb fixture.mmdb 203.0.113.0/24=KP 198.51.100.0/24=US 2001:db8:1::/48=IR
//! ```
//!
//! Entries are applied left to right, so a later, more specific `NET=CC` overrides part of an
//! earlier, wider one. `--corrupt` writes the same database with its metadata truncated.
//! Exit status: 0 written, 1 could not write, 2 bad arguments.

use std::process::ExitCode;

use gatewarden_testkit::{truncate_metadata, MmdbWriter, RecordSize};
use ipnet::IpNet;

const USAGE: &str = "usage: make-test-mmdb OUT.mmdb [--layout country_code|geoip2] \
[--ip-version 6|4] [--record-size 24|28|32] [--database-type NAME] [--build-epoch SECS] \
[--corrupt] [NET=CC ...]";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// `{ "country_code": CC }`
    CountryCode,
    /// `{ "country": { "iso_code": CC }, "registered_country": { "iso_code": CC } }`
    Geoip2,
}

#[derive(Debug, PartialEq)]
struct Options {
    out: String,
    layout: Layout,
    ip_version: u16,
    record_size: RecordSize,
    database_type: Option<String>,
    build_epoch: u64,
    corrupt: bool,
    entries: Vec<(IpNet, String)>,
}

fn parse_args(args: &[String]) -> Result<Options, String> {
    let mut out = None;
    let mut layout = Layout::CountryCode;
    let mut ip_version = 6;
    let mut record_size = RecordSize::default();
    let mut database_type = None;
    let mut build_epoch = 0;
    let mut corrupt = false;
    let mut entries = Vec::new();

    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let mut value = |flag: &str| iter.next().cloned().ok_or_else(|| format!("{flag}: missing value"));
        match arg.as_str() {
            "--layout" => {
                layout = match value("--layout")?.as_str() {
                    "country_code" => Layout::CountryCode,
                    "geoip2" => Layout::Geoip2,
                    other => return Err(format!("--layout: invalid value \"{other}\", expected country_code or geoip2")),
                }
            }
            "--ip-version" => {
                let v = value("--ip-version")?;
                ip_version = match v.as_str() {
                    "4" => 4,
                    "6" => 6,
                    _ => return Err(format!("--ip-version: invalid value \"{v}\", expected 4 or 6")),
                }
            }
            "--record-size" => {
                let v = value("--record-size")?;
                record_size = v
                    .parse::<u16>()
                    .ok()
                    .and_then(|bits| RecordSize::try_from(bits).ok())
                    .ok_or_else(|| format!("--record-size: invalid value \"{v}\", expected 24, 28 or 32"))?;
            }
            "--database-type" => database_type = Some(value("--database-type")?),
            "--build-epoch" => {
                let v = value("--build-epoch")?;
                build_epoch = v.parse().map_err(|_| format!("--build-epoch: invalid value \"{v}\", expected seconds since 1970"))?;
            }
            "--corrupt" => corrupt = true,
            flag if flag.starts_with("--") => return Err(format!("unknown option \"{flag}\"")),
            entry if out.is_some() => entries.push(parse_entry(entry)?),
            path => out = Some(path.to_owned()),
        }
    }
    let out = out.ok_or_else(|| "missing output path".to_owned())?;
    Ok(Options { out, layout, ip_version, record_size, database_type, build_epoch, corrupt, entries })
}

fn parse_entry(entry: &str) -> Result<(IpNet, String), String> {
    let (net, country) = entry.split_once('=').ok_or_else(|| format!("entry \"{entry}\": expected NET=CC, e.g. 203.0.113.0/24=KP"))?;
    let net = net.parse::<IpNet>().map_err(|_| format!("entry \"{entry}\": invalid network \"{net}\""))?;
    if country.is_empty() {
        return Err(format!("entry \"{entry}\": empty country code"));
    }
    Ok((net, country.to_owned()))
}

fn build(options: &Options) -> Result<Vec<u8>, gatewarden_testkit::MmdbError> {
    let default_type = match options.layout {
        Layout::CountryCode => "Gatewarden-Test-Country-Code",
        Layout::Geoip2 => "Gatewarden-Test-GeoIP2-Country",
    };
    let database_type = options.database_type.as_deref().unwrap_or(default_type);
    let mut writer =
        MmdbWriter::new(options.ip_version, database_type)?.with_record_size(options.record_size).with_build_epoch(options.build_epoch);
    if options.layout == Layout::Geoip2 {
        writer = writer.with_languages(["en"]);
    }
    for (net, country) in &options.entries {
        match options.layout {
            Layout::CountryCode => writer.insert_country(*net, country)?,
            Layout::Geoip2 => writer.insert_geoip2_country(*net, country)?,
        }
    }
    let bytes = writer.build()?;
    if options.corrupt {
        truncate_metadata(&bytes)
    } else {
        Ok(bytes)
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = match parse_args(&args) {
        Ok(options) => options,
        Err(message) => {
            eprintln!("make-test-mmdb: {message}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let bytes = match build(&options) {
        Ok(bytes) => bytes,
        Err(err) => {
            eprintln!("make-test-mmdb: {err}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(err) = std::fs::write(&options.out, &bytes) {
        eprintln!("make-test-mmdb: {}: {err}", options.out);
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn entries_and_flags_parse_in_any_order() {
        let options = parse_args(&args(&[
            "out.mmdb",
            "203.0.113.0/24=KP",
            "--layout",
            "geoip2",
            "2001:db8:1::/48=IR",
            "--record-size",
            "32",
            "--corrupt",
        ]))
        .unwrap();
        assert_eq!(options.out, "out.mmdb");
        assert_eq!(options.layout, Layout::Geoip2);
        assert_eq!(options.record_size, RecordSize::Bits32);
        assert!(options.corrupt);
        assert_eq!(
            options.entries,
            vec![("203.0.113.0/24".parse().unwrap(), "KP".to_owned()), ("2001:db8:1::/48".parse().unwrap(), "IR".to_owned()),]
        );
    }

    #[test]
    fn bad_arguments_say_what_is_accepted() {
        let cases: &[(&[&str], &str)] = &[
            (&[], "missing output path"),
            (&["o", "--layout", "city"], "--layout: invalid value \"city\", expected country_code or geoip2"),
            (&["o", "--record-size", "30"], "--record-size: invalid value \"30\", expected 24, 28 or 32"),
            (&["o", "--ip-version"], "--ip-version: missing value"),
            (&["o", "10.0.0.0/8"], "entry \"10.0.0.0/8\": expected NET=CC, e.g. 203.0.113.0/24=KP"),
            (&["o", "10.0.0.0/33=US"], "entry \"10.0.0.0/33=US\": invalid network \"10.0.0.0/33\""),
            (&["o", "--verbose"], "unknown option \"--verbose\""),
        ];
        for (input, expected) in cases {
            assert_eq!(parse_args(&args(input)).unwrap_err(), *expected, "args {input:?}");
        }
    }
}
