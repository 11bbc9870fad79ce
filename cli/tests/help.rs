//! The command line itself: help for every command, `--version`, suggestions for typos, shell
//! completions, and the exit statuses (0 ok, 1 invalid/failed, 2 could not run).

// Helpers outside #[test] functions may unwrap too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{modules_dir, run, run_in, s, temp_dir};

/// Every command and the flags it took before the move to clap (the old USAGE text), plus the
/// long forms added since: scripts and docs use these spellings, so help must name each one.
const COMMANDS: &[(&str, &[&str])] = &[
    ("validate", &["--filter", "--format"]),
    ("schema", &["--kong"]),
    ("render-json", &["--filter"]),
    ("geo-lookup", &[]),
    ("test", &["--modules", "--junit"]),
    (
        "eval",
        &[
            "--policy",
            "--request",
            "--fixtures",
            "--method",
            "--path",
            "-H, --header",
            "--peer",
            "--body",
            "--time",
            "--modules",
            "--filter",
            "--profile",
        ],
    ),
    (
        "render",
        &[
            "--target",
            "--out",
            "--module",
            "--modules",
            "--vm-id",
            "--vm-config",
            "--url",
            "--sha256",
            "--namespace",
            "--service",
            "--shm-size",
            "--ecds-dir",
            "--filter",
        ],
    ),
    ("apply", &["--to", "--author", "-m, --message", "--module", "--modules", "--vm-id", "--vm-config", "--filter", "--target"]),
    ("history", &["--to", "--filter", "--format"]),
    ("diff", &["--to", "--format", "--filter"]),
    ("rollback", &["--to", "--version", "--filter", "--author", "-m, --message", "--vm-config", "--module", "--vm-id"]),
    ("keygen", &["--out"]),
    ("sign", &["--key", "--key-id", "--filter"]),
    ("verify", &["--trust", "--filter"]),
    ("promote", &["--filter"]),
    ("abort", &["--filter"]),
    ("counters", &["--module", "--host-prefix", "--module-name"]),
    ("completions", &[]),
];

#[test]
fn the_top_level_help_lists_every_command_and_the_exit_statuses() {
    let (code, out, err) = run(&["--help"]);
    assert_eq!(code, 0, "{err}");
    let listed: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .collect();
    let expected: Vec<&str> = COMMANDS.iter().map(|(c, _)| *c).collect();
    assert_eq!(listed, expected, "{out}");
    assert!(out.contains("Exit status: 0 ok; 1 invalid or failed"), "{out}");
    // `help` is the same text.
    assert_eq!(run(&["help"]), (0, out, String::new()));
}

#[test]
fn every_command_has_help_naming_its_flags() {
    for (cmd, flags) in COMMANDS {
        let (code, out, err) = run(&[cmd, "--help"]);
        assert_eq!((code, err.as_str()), (0, ""), "{cmd} --help");
        assert!(out.contains(&format!("Usage: gatewarden {cmd}")), "{cmd}: {out}");
        for flag in *flags {
            // A flag at the start of its help line: `  --to <DIR>  The ECDS directory…`.
            let named = out.lines().any(|l| l.trim_start().starts_with(&format!("{flag} ")) || l.trim() == *flag);
            assert!(named, "{cmd} --help does not name {flag}:\n{out}");
        }
        // Each flag says what it is for, on its line or (long help) on the next one.
        let lines: Vec<&str> = out.lines().collect();
        let is_flag = |l: &str| {
            let t = l.trim_start();
            t.starts_with("--") || (t.starts_with('-') && t.get(2..4) == Some(", "))
        };
        for (i, line) in lines.iter().enumerate().filter(|(_, l)| is_flag(l)) {
            let same_line = line.trim().split("  ").filter(|p| !p.is_empty()).count() >= 2;
            let next_line = lines.get(i + 1).is_some_and(|n| !n.trim().is_empty() && !is_flag(n));
            assert!(same_line || next_line, "{cmd}: no help text for {line:?}");
        }
        // `gatewarden help CMD` is the same.
        assert_eq!(run(&["help", cmd]).1, out, "{cmd}");
    }
}

#[test]
fn version() {
    let (code, out, err) = run(&["--version"]);
    assert_eq!((code, err.as_str()), (0, ""));
    assert_eq!(out, format!("gatewarden {}\n", env!("CARGO_PKG_VERSION")));
    assert_eq!(run(&["-V"]).1, out);
}

#[test]
fn typos_get_a_suggestion_and_exit_two() {
    let (code, out, err) = run(&["valdate", "x.yaml"]);
    assert_eq!((code, out.as_str()), (2, ""));
    assert!(err.contains("unrecognized subcommand 'valdate'") && err.contains("'validate'"), "{err}");
    let (code, _, err) = run(&["rollback", "--to", "d", "--verison", "2"]);
    assert_eq!(code, 2);
    assert!(err.contains("a similar argument exists: '--version'"), "{err}");
    let (code, _, err) = run(&["schema", "ipgeo"]);
    assert_eq!(code, 2);
    assert!(err.contains("[possible values: ip_geo, jwt, rate_limit, validate]"), "{err}");
}

#[test]
fn completions_for_bash_zsh_and_fish() {
    for shell in ["bash", "zsh", "fish"] {
        let (code, out, err) = run(&["completions", shell]);
        assert_eq!((code, err.as_str()), (0, ""), "{shell}");
        // The script knows the commands, their flags and the values of an enum flag.
        for word in ["validate", "render-json", "rollback", "vm-config", "ip_geo"] {
            assert!(out.contains(word), "{shell} completions lack {word}");
        }
    }
    let (code, out, err) = run(&["completions", "tcsh"]);
    assert_eq!((code, out.as_str()), (2, ""));
    assert!(err.contains("invalid value 'tcsh'"), "{err}");
}

#[test]
fn usage_errors_exit_two_and_say_where_help_is() {
    for args in [
        &["apply", "p.yaml"][..],                                                      // no --to
        &["apply", "--to", "d"],                                                       // no policy
        &["apply", "a.yaml", "b.yaml", "--to", "d"],                                   // two policies
        &["render", "--target", "mesh", "p.yaml"],                                     // unknown value
        &["validate"],                                                                 // nothing to validate
        &["eval"],                                                                     // no policy
        &["eval", "--policy", "p.yaml", "-H", "no-colon"],                             // bad header
        &["rollback", "--to", "d", "--version", "latest"],                             // not a number
        &["render", "--target", "envoy", "--module", "m", "--modules", "d", "p.yaml"], // exclusive
        &["history"],                                                                  // no --to
    ] {
        let (code, out, err) = run(args);
        assert_eq!((code, out.as_str()), (2, ""), "{args:?}: {err}");
        assert!(err.starts_with("error: ") && err.contains("--help"), "{args:?}: {err}");
    }
    // No command at all: the help, on stderr, status 2.
    let (code, out, err) = run(&[]);
    assert_eq!((code, out.as_str()), (2, ""));
    assert!(err.contains("Usage: gatewarden <COMMAND>"), "{err}");
}

#[test]
fn an_invalid_policy_is_one_and_an_unreadable_file_two_for_every_command_that_reads_one() {
    let d = temp_dir("help", "invalid");
    let bad = d.join("bad.yaml");
    std::fs::write(&bad, "filter: ip_geo\npolicy_version: v1\ndefault: { deny: [10.0.0.0/33] }\n").unwrap();
    let ecds = d.join("ecds");
    std::fs::create_dir_all(&ecds).unwrap();
    for args in [
        vec!["validate", s(&bad)],
        vec!["render-json", s(&bad)],
        vec!["render", "--target", "envoy", s(&bad)],
        vec!["apply", s(&bad), "--to", s(&ecds)],
        vec!["eval", "--policy", s(&bad)],
        vec!["promote", s(&bad)], // no rollout: nothing to promote
    ] {
        let (code, out, err) = run(&args);
        assert_eq!((code, out.as_str()), (1, ""), "{args:?}: {err}");
        assert!(err.starts_with(s(&bad)), "{args:?}: {err}");
    }
    assert_eq!(std::fs::read_dir(&ecds).unwrap().count(), 0, "a refused apply wrote something");
    let missing = d.join("missing.yaml");
    for args in
        [vec!["validate", s(&missing)], vec!["render", "--target", "kong", s(&missing)], vec!["apply", s(&missing), "--to", s(&ecds)]]
    {
        let (code, _, err) = run(&args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains("cannot read"), "{args:?}: {err}");
    }
}

#[test]
fn a_case_that_asserts_nothing_is_refused_naming_the_file_and_the_case() {
    let d = temp_dir("help", "noexpect");
    std::fs::write(d.join("p.yaml"), "filter: ip_geo\npolicy_version: v1\nrules:\n  - { name: block, deny: [203.0.113.0/24] }\n").unwrap();
    std::fs::write(
        d.join("t.test.yaml"),
        "policy: p.yaml\ncases:\n\
         \x20 - name: blocked\n    request: { peer: 203.0.113.9 }\n    expect: { status: 403 }\n\
         \x20 - name: empty expect\n    request: { peer: 203.0.113.9 }\n    expect: {}\n\
         \x20 - name: no expect\n    request: { peer: 198.51.100.1 }\n",
    )
    .unwrap();
    let modules = modules_dir();
    let (code, out, err) = run_in(&d, &["test", "--modules", s(&modules), "--junit", "r.xml"]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(out.contains("  ok     blocked (403 deny, rule block)"), "{out}");
    assert!(out.contains("  INVALID empty expect\n         `expect: {}` asserts nothing: a test that cannot fail"), "{out}");
    assert!(out.contains("  INVALID no expect\n         no `expect`: a test that cannot fail"), "{out}");
    assert!(out.contains("1 passed, 2 failed, 0 errors in 1 files"), "{out}");
    for case in ["empty expect", "no expect"] {
        let line = format!("gatewarden test: ./t.test.yaml: case {case:?}: ");
        assert!(err.contains(&line), "{line:?} not in {err}");
    }
    let xml = std::fs::read_to_string(d.join("r.xml")).unwrap();
    assert_eq!(xml.matches("type=\"invalid\"").count(), 2, "{xml}");
}
