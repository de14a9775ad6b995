//! The `sluice` subcommands this crate implements: `up`, `scale`, `ps`, `down`, `lb-count`.
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};

pub use crate::lbcount::LbCountArgs;
use crate::topology::Topology;
use crate::up::{self, PsReport, UpOptions};

/// Arguments of `sluice up`.
#[derive(clap::Args, Debug, Clone)]
pub struct UpArgs {
    /// Topology file (default: the guide's mesh, built in).
    #[arg(short = 'f', long = "file")]
    pub file: Option<PathBuf>,
    /// Run in the background (logs in files); stop with `sluice down`.
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Initial replicas, NAME=N (repeatable), e.g. `--scale service1=3`.
    #[arg(long = "scale", value_name = "NAME=N")]
    pub scale: Vec<String>,
    /// Publish a port on another host port, HOST_PORT:PORT (repeatable). Also PORT_PROXY,
    /// PORT_HTTPS, PORT_STATS for the guide's front proxy.
    #[arg(short = 'p', long = "publish", value_name = "HOST_PORT:PORT")]
    pub publish: Vec<String>,
    /// Address the published ports bind on (default: the topology's, 127.0.0.1 for the guide).
    #[arg(long)]
    pub publish_address: Option<IpAddr>,
    /// /24 inside 127.0.0.0/8 for replica addresses, e.g. 127.0.10.0 (default: the topology's).
    #[arg(long)]
    pub subnet: Option<Ipv4Addr>,
    /// Set `dns_refresh_rate` (e.g. `1s`) on every DNS cluster of every proxy.
    #[arg(long)]
    pub dns_refresh_rate: Option<String>,
    /// Directory of the state file that `scale`, `ps`, `down` read.
    #[arg(long, env = "SLUICE_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Seconds a replica may take to become ready.
    #[arg(long, default_value_t = 60.0)]
    pub timeout: f64,
    /// Seconds to wait, after the DNS refresh, before stopping a replica removed by scaling down.
    #[arg(long, default_value_t = 1.0)]
    pub drain: f64,
    /// No colours in the log prefixes.
    #[arg(long)]
    pub no_color: bool,
    /// The `sluice` executable for the children (default: this one).
    #[arg(long, hide = true)]
    pub exe: Option<PathBuf>,
    /// Run the proxies with this Envoy-compatible binary (e.g. real Envoy) instead of
    /// `sluice proxy`.
    #[arg(long, env = "SLUICE_PROXY_EXE")]
    pub proxy_exe: Option<PathBuf>,
    /// Internal: this is the background process of `up -d`.
    #[arg(long, hide = true)]
    pub detached_child: bool,
}

/// Arguments of `sluice scale`.
#[derive(clap::Args, Debug, Clone)]
pub struct ScaleArgs {
    /// NAME=N pairs, e.g. `service1=3`.
    #[arg(required = true, value_name = "NAME=N")]
    pub specs: Vec<String>,
    /// Directory of the state file of the running `sluice up`.
    #[arg(long, env = "SLUICE_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Seconds to wait for the change.
    #[arg(long, default_value_t = 300.0)]
    pub timeout: f64,
}

/// Arguments of `sluice ps`.
#[derive(clap::Args, Debug, Clone)]
pub struct PsArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Also show exited replicas.
    #[arg(short = 'a', long)]
    pub all: bool,
    /// Directory of the state file of the running `sluice up`.
    #[arg(long, env = "SLUICE_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
}

/// Arguments of `sluice down`.
#[derive(clap::Args, Debug, Clone)]
pub struct DownArgs {
    /// Directory of the state file of the running `sluice up`.
    #[arg(long, env = "SLUICE_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Seconds to wait for everything to stop.
    #[arg(long, default_value_t = 60.0)]
    pub timeout: f64,
}

fn parse_scale(specs: &[String]) -> anyhow::Result<BTreeMap<String, u32>> {
    let mut out = BTreeMap::new();
    for s in specs {
        let (name, n) = s
            .split_once('=')
            .ok_or_else(|| anyhow!("expected NAME=N, got {s:?}"))?;
        let n: u32 = n
            .trim()
            .parse()
            .with_context(|| format!("{s:?}: N must be a number"))?;
        out.insert(name.trim().to_string(), n);
    }
    Ok(out)
}

fn parse_publish(specs: &[String]) -> anyhow::Result<BTreeMap<u16, u16>> {
    let mut out = BTreeMap::new();
    for s in specs {
        let (host, inner) = s
            .split_once(':')
            .ok_or_else(|| anyhow!("expected HOST_PORT:PORT, got {s:?}"))?;
        out.insert(
            inner.trim().parse().context("bad port")?,
            host.trim().parse().context("bad host port")?,
        );
    }
    Ok(out)
}

fn state_dir(d: &Option<PathBuf>) -> PathBuf {
    d.clone().unwrap_or_else(up::default_state_dir)
}

fn code(c: u8) -> ExitCode {
    ExitCode::from(c)
}

/// `sluice up`.
pub fn up(args: UpArgs) -> anyhow::Result<ExitCode> {
    let sdir = state_dir(&args.state_dir);
    let timeout = Duration::from_secs_f64(args.timeout.max(0.1));
    let topology = match &args.file {
        Some(f) => Topology::load(f)?,
        None => Topology::guide(),
    };
    let scale = parse_scale(&args.scale)?;
    for name in scale.keys() {
        if topology.component(name).is_none() {
            bail!("--scale: no component {name} in the topology");
        }
    }
    let publish = parse_publish(&args.publish)?;
    if args.detach && !args.detached_child {
        let argv: Vec<String> = std::env::args()
            .skip(1)
            .filter(|a| a != "-d" && a != "--detach")
            .chain(["--detached-child".to_string()])
            .collect();
        let total = timeout * (topology.components.len() as u32 + 1);
        return Ok(code(up::run_detached(argv, &sdir, total)?));
    }
    let color = !args.no_color
        && !args.detached_child
        && std::env::var_os("NO_COLOR").is_none()
        && std::io::stdout().is_terminal();
    let opts = UpOptions {
        topology,
        scale,
        publish,
        publish_address: args.publish_address,
        subnet: args.subnet,
        dns_refresh_rate: args.dns_refresh_rate,
        state_dir: sdir,
        run_dir: None,
        exe: match args.exe {
            Some(e) => e,
            None => std::env::current_exe().context("cannot find the sluice executable")?,
        },
        proxy_exe: args.proxy_exe,
        ready_timeout: timeout,
        drain: Duration::from_secs_f64(args.drain.max(0.0)),
        color,
        log_files: args.detached_child,
    };
    Ok(code(up::run_up(opts)?))
}

/// `sluice scale`.
pub fn scale(args: ScaleArgs) -> anyhow::Result<ExitCode> {
    let specs = parse_scale(&args.specs)?;
    let state = up::running_state(&state_dir(&args.state_dir))?;
    let body = serde_json::json!({ "scale": specs }).to_string();
    let v = up::control_call(
        &state,
        "POST",
        "/scale",
        Some(&body),
        Duration::from_secs_f64(args.timeout),
    )?;
    for line in v["done"].as_array().into_iter().flatten() {
        println!("{}", line.as_str().unwrap_or_default());
    }
    Ok(ExitCode::SUCCESS)
}

/// Formats a `ps` report as a table.
pub fn ps_table(report: &PsReport, all: bool) -> String {
    let mut rows = vec![vec![
        "NAME".to_string(),
        "COMPONENT".into(),
        "ROLE".into(),
        "ADDRESS".into(),
        "PID".into(),
        "STATE".into(),
        "PORTS".into(),
    ]];
    for r in report
        .replicas
        .iter()
        .filter(|r| all || !r.state.starts_with("exited"))
    {
        rows.push(vec![
            r.name.clone(),
            r.component.clone(),
            r.role.clone(),
            r.ip.to_string(),
            r.pid.to_string(),
            r.state.clone(),
            r.ports.join(", "),
        ]);
    }
    let widths: Vec<usize> = (0..7)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out.push_str(&format!(
        "\nDNS {} (names: {})\n",
        report.dns,
        report
            .zone
            .iter()
            .filter(|(n, _)| report.replicas.iter().any(|r| &r.component == n))
            .map(|(n, ips)| format!("{n}→{}", ips.len()))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    out
}

/// `sluice ps`.
pub fn ps(args: PsArgs) -> anyhow::Result<ExitCode> {
    let state = up::running_state(&state_dir(&args.state_dir))?;
    let v = up::control_call(&state, "GET", "/ps", None, Duration::from_secs(10))?;
    if args.json {
        out(&format!("{}\n", serde_json::to_string_pretty(&v)?));
        return Ok(ExitCode::SUCCESS);
    }
    let report: PsReport = serde_json::from_value(v).context("bad answer from sluice up")?;
    out(&ps_table(&report, args.all));
    Ok(ExitCode::SUCCESS)
}

/// `sluice down`.
pub fn down(args: DownArgs) -> anyhow::Result<ExitCode> {
    let dir = state_dir(&args.state_dir);
    let state = up::running_state(&dir)?;
    if let Err(e) = up::control_call(&state, "POST", "/down", None, Duration::from_secs(10)) {
        eprintln!("{e:#}; sending SIGTERM to pid {}", state.pid);
        unsafe { libc::kill(state.pid as libc::pid_t, libc::SIGTERM) };
    }
    let deadline = Instant::now() + Duration::from_secs_f64(args.timeout);
    while up::pid_alive(state.pid) && is_not_zombie(state.pid) {
        if Instant::now() >= deadline {
            bail!(
                "sluice up (pid {}) did not stop within {}s",
                state.pid,
                args.timeout
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("mesh {} stopped", state.name);
    Ok(ExitCode::SUCCESS)
}

/// Prints to stdout, ignoring a closed pipe (`sluice ps | head`).
fn out(text: &str) {
    use std::io::Write;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

fn is_not_zombie(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit_once(')')
            .map(|(_, r)| r.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// `sluice lb-count`.
pub fn lb_count(args: LbCountArgs) -> anyhow::Result<ExitCode> {
    crate::lbcount::run(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        let s = parse_scale(&["service1=3".into(), "service2 = 2".into()]).unwrap();
        assert_eq!(s["service1"], 3);
        assert_eq!(s["service2"], 2);
        assert!(parse_scale(&["x".into()]).is_err());
        assert!(parse_scale(&["x=y".into()]).is_err());
        let p = parse_publish(&["18080:8080".into()]).unwrap();
        assert_eq!(p[&8080], 18080);
        assert!(parse_publish(&["8080".into()]).is_err());
    }
}
