//! `sluice proxy` command line, as scripts written for Envoy use it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn sluice(args: &[&str]) -> Output {
    Command::new(SLUICE).args(args).output().expect("run sluice")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn validate_passes_on_the_example_configs_with_unresolvable_dns_names() {
    for file in ["front-envoy.yaml", "service-envoy-1.yaml", "service-envoy-2.yaml"] {
        let path = repo().join("examples/guide").join(file);
        let path = path.to_str().unwrap();
        let out = sluice(&["proxy", "-c", path, "--mode", "validate"]);
        assert!(out.status.success(), "{file}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout), format!("configuration '{path}' OK\n"));
    }
}

#[test]
fn validate_fails_with_the_field_path_and_exit_code_1() {
    let dir = std::env::temp_dir().join(format!("sluice-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let front = std::fs::read_to_string(repo().join("examples/guide/service-envoy-1.yaml")).unwrap();
    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, front.replace("prefix: \"/service/1\"", "prefx: \"/service/1\"")).unwrap();
    assert!(std::fs::read_to_string(&bad).unwrap().contains("prefx"), "fixture edit applied");
    let out = sluice(&["proxy", "-c", bad.to_str().unwrap(), "--mode", "validate"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err = text(&out.stderr);
    assert!(
        err.contains(".route_config.virtual_hosts[0].routes[0].match: unknown field \"prefx\""),
        "{err}"
    );
    // A missing file is a clear error too.
    let out = sluice(&["proxy", "-c", "/nonexistent/envoy.yaml", "--mode", "validate"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("/nonexistent/envoy.yaml"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn config_yaml_merges_over_the_file_like_envoy() {
    let path = repo().join("examples/guide/service-envoy-1.yaml");
    let path = path.to_str().unwrap();
    let ok = sluice(&["proxy", "-c", path, "--config-yaml", "stats_flush_interval: 2s", "--mode", "validate"]);
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    let bad = sluice(&["proxy", "-c", path, "--config-yaml", "bogus_field: 1", "--mode", "validate"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(text(&bad.stderr).contains("unknown field \"bogus_field\""), "{}", text(&bad.stderr));
}

#[test]
fn every_subcommand_has_help_and_the_binary_a_version() {
    let v = sluice(&["--version"]);
    assert!(v.status.success());
    assert!(text(&v.stdout).starts_with("sluice "), "{}", text(&v.stdout));
    for sub in ["proxy", "authz", "service", "up", "scale", "ps", "down", "lb-count"] {
        let out = sluice(&[sub, "--help"]);
        assert!(out.status.success(), "{sub} --help");
        let help = text(&out.stdout);
        assert!(help.contains("Usage: sluice"), "{sub}: {help}");
        assert!(help.lines().count() > 5, "{sub} help is too thin: {help}");
    }
    let out = sluice(&["proxy", "--help"]);
    for flag in ["--config-path", "--concurrency", "--log-level", "--mode"] {
        assert!(text(&out.stdout).contains(flag), "proxy --help lacks {flag}");
    }
}
