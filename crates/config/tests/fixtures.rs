//! Config fixtures: every file under `fixtures/valid` must load; every file under
//! `fixtures/invalid` must fail with exactly the errors listed in its leading `# expect:` lines.
//! Adding a file adds a case.

use std::path::{Path, PathBuf};

use sluice_config::{load_file, parse_tree, Format};

fn fixtures(dir: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", root.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml" | "json")
            )
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no fixtures in {}", root.display());
    files
}

/// The `# expect: <line>` lines at the top of a fixture.
fn expectations(text: &str) -> Vec<String> {
    text.lines()
        .take_while(|l| l.starts_with('#'))
        .filter_map(|l| l.strip_prefix("# expect: "))
        .map(str::to_string)
        .collect()
}

#[test]
fn valid_fixtures_load() {
    let mut failures = Vec::new();
    for path in fixtures("valid") {
        if let Err(e) = load_file(&path) {
            failures.push(format!("{}:\n{e}", path.display()));
        }
    }
    assert!(
        failures.is_empty(),
        "valid fixtures rejected:\n{}",
        failures.join("\n\n")
    );
}

#[test]
fn valid_fixtures_survive_a_typed_round_trip() {
    // The typed structs serialize back into a bootstrap that loads again (what /config_dump and
    // tooling rely on).
    for path in fixtures("valid") {
        let snapshot = load_file(&path).unwrap();
        let json = serde_json::to_string(&snapshot.bootstrap).unwrap();
        if let Err(e) = sluice_config::parse(&json, Format::Json) {
            panic!("{}: round trip failed:\n{e}\n{json}", path.display());
        }
    }
}

#[test]
fn invalid_fixtures_fail_with_their_expected_errors() {
    let mut failures = Vec::new();
    for path in fixtures("invalid") {
        let text = std::fs::read_to_string(&path).unwrap();
        let mut expected = expectations(&text);
        assert!(
            !expected.is_empty(),
            "{}: no `# expect:` line at the top",
            path.display()
        );
        match load_file(&path) {
            Ok(_) => failures.push(format!(
                "{}: accepted, expected:\n  {}",
                path.display(),
                expected.join("\n  ")
            )),
            Err(e) => {
                let mut got: Vec<String> = e.errors.iter().map(ToString::to_string).collect();
                got.sort();
                expected.sort();
                if got != expected {
                    failures.push(format!(
                        "{}:\n expected:\n  {}\n got:\n  {}",
                        path.display(),
                        expected.join("\n  "),
                        got.join("\n  ")
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} invalid fixture(s) misbehaved:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn expectations_are_read_from_the_leading_comment_only() {
    let text = "# expect: a: b\n# a note\n# expect: c: d\nx: 1\n# expect: not me\n";
    assert_eq!(expectations(text), ["a: b", "c: d"]);
}

#[test]
fn json_and_yaml_fixtures_of_the_same_config_agree() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/valid");
    let yaml = parse_tree(
        &std::fs::read_to_string(dir.join("front-proxy.yaml")).unwrap(),
        Format::Yaml,
    )
    .unwrap();
    let json = parse_tree(
        &std::fs::read_to_string(dir.join("front-proxy.json")).unwrap(),
        Format::Json,
    )
    .unwrap();
    assert_eq!(yaml, json);
}
