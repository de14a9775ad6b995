//! The corpus of real-world configs (`tests/corpus/`), loaded by sluice and, when `SLUICE_ENVOY`
//! names a real Envoy 1.40, checked by `envoy --mode validate`. The contract:
//!
//! * Envoy refuses a config ⇒ sluice refuses it;
//! * Envoy accepts a config ⇒ sluice accepts it, or refuses it only with errors that name a path
//!   and say `not supported by sluice`.
//!
//! Files named `*-mistake-*` are configs Envoy refuses (common mistakes); sluice must refuse them
//! even when Envoy is not available. The test prints a table (Envoy's verdict, sluice's verdict,
//! sluice's first error) and the totals.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn corpus() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml" | "json")
            )
        })
        .collect();
    files.sort();
    files
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Sluice {
    Loads,
    /// Every error names a path and says "not supported by sluice".
    Unsupported(String),
    Refused(String),
}

fn sluice_verdict(path: &Path) -> Sluice {
    match sluice_config::load_file(path) {
        Ok(_) => Sluice::Loads,
        Err(e) => {
            let first = e.errors[0].to_string();
            let unsupported = e
                .errors
                .iter()
                .all(|pe| !pe.path.is_empty() && pe.message.contains("not supported by sluice"));
            if unsupported {
                Sluice::Unsupported(first)
            } else {
                Sluice::Refused(first)
            }
        }
    }
}

/// `Some(true)` when Envoy accepts the config, `Some(false)` when it refuses it (with its last
/// line), `None` when Envoy could not be run to the end.
fn envoy_verdict(envoy: &str, path: &Path) -> Result<(bool, String), String> {
    let mut child = Command::new(envoy)
        .args([
            "--mode",
            "validate",
            "--use-dynamic-base-id",
            "-l",
            "error",
            "-c",
        ])
        .arg(path)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {envoy}: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(_status) = child.try_wait().map_err(|e| e.to_string())? {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "envoy did not finish validating {}",
                path.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let last = text
        .lines()
        .rev()
        .find(|l| l.contains("error initializing configuration") || l.contains(" OK"))
        .or_else(|| text.lines().rev().find(|l| !l.trim().is_empty()))
        .unwrap_or("")
        .to_string();
    Ok((out.status.success(), last))
}

fn cut(s: &str, n: usize) -> String {
    let s = s.replace('\n', " ");
    if s.chars().count() <= n {
        s
    } else {
        format!("{}…", s.chars().take(n).collect::<String>())
    }
}

#[test]
fn corpus_loads_as_envoy_decides() {
    let files = corpus();
    assert!(files.len() >= 30, "corpus too small: {}", files.len());
    let envoy = std::env::var("SLUICE_ENVOY").ok().filter(|e| !e.is_empty());
    if envoy.is_none() {
        println!("SLUICE_ENVOY is unset: the corpus is loaded by sluice only, without real Envoy's verdicts");
    }

    // Envoy's verdicts, three validations at a time (each is mostly start-up latency).
    let verdicts: Vec<Option<Result<(bool, String), String>>> = match &envoy {
        None => files.iter().map(|_| None).collect(),
        Some(envoy) => {
            let mut out: Vec<Option<Result<(bool, String), String>>> = vec![None; files.len()];
            for chunk in files.iter().enumerate().collect::<Vec<_>>().chunks(3) {
                let handles: Vec<_> = chunk
                    .iter()
                    .map(|(i, f)| {
                        let (i, f, envoy) = (*i, (*f).clone(), envoy.clone());
                        std::thread::spawn(move || (i, envoy_verdict(&envoy, &f)))
                    })
                    .collect();
                for h in handles {
                    let (i, v) = h.join().unwrap();
                    out[i] = Some(v);
                }
            }
            out
        }
    };

    let mut rows = Vec::new();
    let (mut both, mut unsupported, mut refused_by_both, mut mismatches) = (0, 0, 0, Vec::new());
    for (path, envoy) in files.iter().zip(verdicts) {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let sluice = sluice_verdict(path);
        let mistake = name.contains("-mistake-");
        let envoy_accepts = match &envoy {
            Some(Ok((ok, _))) => Some(*ok),
            Some(Err(e)) => panic!("{name}: {e}"),
            None => None,
        };
        let envoy_col = match envoy_accepts {
            Some(true) => "accepts",
            Some(false) => "refuses",
            None => "-",
        };
        let (sluice_col, first) = match &sluice {
            Sluice::Loads => ("loads", String::new()),
            Sluice::Unsupported(e) => ("unsupported", e.clone()),
            Sluice::Refused(e) => ("refuses", e.clone()),
        };
        rows.push(format!(
            "{name:<36} {envoy_col:<8} {sluice_col:<11} {}",
            cut(&first, 150)
        ));
        let ok = match (envoy_accepts, &sluice) {
            (Some(true), Sluice::Loads) => {
                both += 1;
                !mistake
            }
            (Some(true), Sluice::Unsupported(_)) => {
                unsupported += 1;
                !mistake
            }
            (Some(true), Sluice::Refused(_)) => false,
            (Some(false), Sluice::Loads) => false,
            (Some(false), _) => {
                refused_by_both += 1;
                true
            }
            // Without Envoy: the mistakes must be refused; the rest is reported.
            (None, Sluice::Loads) => {
                both += 1;
                !mistake
            }
            (None, Sluice::Unsupported(_)) => {
                unsupported += 1;
                !mistake
            }
            (None, Sluice::Refused(_)) => mistake,
        };
        if !ok {
            let envoy_line = match &envoy {
                Some(Ok((_, line))) => cut(line, 300),
                _ => String::new(),
            };
            mismatches.push(format!(
                "{name}: envoy {envoy_col}, sluice {sluice_col}: {first}\n    envoy: {envoy_line}"
            ));
        }
    }
    println!(
        "{:<36} {:<8} {:<11} first sluice error",
        "config", "envoy", "sluice"
    );
    for r in &rows {
        println!("{r}");
    }
    println!(
        "totals: {} configs; {both} load in both; {unsupported} refused by sluice as unsupported; \
         {refused_by_both} refused by both; {} mismatches{}",
        files.len(),
        mismatches.len(),
        if envoy.is_none() {
            " (sluice only: SLUICE_ENVOY unset)"
        } else {
            ""
        }
    );
    assert!(
        mismatches.is_empty(),
        "{} config(s) break the contract:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}
