//! `sluice up`: runs a topology as child processes with per-replica loopback addresses, an
//! embedded DNS server, multiplexed logs, readiness checks, scaling and orphan-free shutdown.

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, Context};
use serde::{Deserialize, Serialize};

use crate::dns::DnsServer;
use crate::rewrite::{self, Rewrite};
use crate::topology::{Component, Role, Topology};

/// Lines of each replica's log kept for error reports.
const TAIL: usize = 20;
/// Time between SIGTERM and SIGKILL when stopping.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// How `up` is configured (built from the command line by `cli`).
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// The topology.
    pub topology: Topology,
    /// Replica counts overriding the topology's.
    pub scale: BTreeMap<String, u32>,
    /// Published port (in the mesh) → host port, overriding the topology and its env variables.
    pub publish: BTreeMap<u16, u16>,
    /// Address published ports bind on (default: the topology's).
    pub publish_address: Option<IpAddr>,
    /// Subnet for replica addresses (default: the topology's).
    pub subnet: Option<Ipv4Addr>,
    /// `dns_refresh_rate` for every DNS cluster (default: the topology's, else unchanged).
    pub dns_refresh_rate: Option<String>,
    /// Where the state file goes.
    pub state_dir: PathBuf,
    /// Where per-replica configs and logs go (default: a fresh dir).
    pub run_dir: Option<PathBuf>,
    /// The `sluice` executable to run children with.
    pub exe: PathBuf,
    /// Run proxies with this Envoy-compatible executable (`EXE -c CONFIG --disable-hot-restart`)
    /// instead of `sluice proxy -c CONFIG`.
    pub proxy_exe: Option<PathBuf>,
    /// How long a replica may take to become ready.
    pub ready_timeout: Duration,
    /// Extra wait after DNS refresh before a removed replica is stopped.
    pub drain: Duration,
    /// Logs: coloured prefix on stdout, and/or one file per replica.
    pub color: bool,
    /// Also write each replica's log to `RUN_DIR/logs/NAME.log`.
    pub log_files: bool,
}

/// The state file: how `scale`, `ps`, `down` find a running `up`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StateFile {
    /// Pid of the `up` process.
    pub pid: u32,
    /// Control API address.
    pub control: SocketAddr,
    /// Token required by the control API.
    pub token: String,
    /// Project name.
    pub name: String,
    /// Per-replica configs and logs.
    pub run_dir: PathBuf,
    /// The embedded DNS server.
    pub dns: SocketAddr,
    /// All components ready.
    pub ready: bool,
}

/// One replica as `sluice ps` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReplicaInfo {
    /// Component name.
    pub component: String,
    /// Replica name (`service1-2`), also its host name and log prefix.
    pub name: String,
    /// Role of the component.
    pub role: String,
    /// Index (1-based).
    pub index: u32,
    /// Its loopback address.
    pub ip: IpAddr,
    /// Process id.
    pub pid: u32,
    /// starting | running | stopping | exited (…)
    pub state: String,
    /// Addresses it listens on.
    pub ports: Vec<String>,
}

/// The answer of the control API's `GET /ps`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PsReport {
    /// Project name.
    pub name: String,
    /// The DNS server.
    pub dns: SocketAddr,
    /// The zone: name → addresses.
    pub zone: Vec<(String, Vec<IpAddr>)>,
    /// Replicas.
    pub replicas: Vec<ReplicaInfo>,
    /// How long scaling down waits before stopping a replica.
    pub scale_down_wait_ms: u64,
}

impl PsReport {
    /// Parses the JSON of `sluice ps --json`.
    pub fn parse(json: &[u8]) -> anyhow::Result<PsReport> {
        Ok(serde_json::from_slice(json)?)
    }
}

#[derive(Debug, Clone, PartialEq)]
enum RState {
    Starting,
    Running,
    Stopping,
    Exiting,
    Exited(String),
}

impl RState {
    fn alive(&self) -> bool {
        matches!(self, RState::Starting | RState::Running)
    }
    fn signalable(&self) -> bool {
        matches!(self, RState::Starting | RState::Running | RState::Stopping)
    }
    fn text(&self) -> String {
        match self {
            RState::Starting => "starting".into(),
            RState::Running => "running".into(),
            RState::Stopping => "stopping".into(),
            RState::Exiting => "exiting".into(),
            RState::Exited(d) => format!("exited ({d})"),
        }
    }
}

struct Replica {
    component: String,
    index: u32,
    name: String,
    ip: Ipv4Addr,
    pid: u32,
    state: RState,
    /// Stopped on purpose (scale down, shutdown): its exit is not reported as a crash.
    intentional: bool,
    tail: Arc<Mutex<VecDeque<String>>>,
    listeners: Vec<SocketAddr>,
    admin: Option<SocketAddr>,
    #[allow(dead_code)]
    started: SystemTime,
}

/// What the main loop of `up` reacts to.
pub enum Event {
    /// A replica exited (`unexpected`: not stopped by us).
    Exited {
        name: String,
        desc: String,
        unexpected: bool,
        tail: String,
    },
    /// SIGINT / SIGTERM.
    Signal,
    /// `sluice down`.
    Down,
}

/// Spawns children from one long-lived thread: PR_SET_PDEATHSIG fires when the *thread* that
/// forked the child exits, so no short-lived thread may spawn them.
struct Spawner {
    tx: Mutex<mpsc::Sender<(Command, mpsc::Sender<io::Result<Child>>)>>,
}

impl Spawner {
    fn new() -> Spawner {
        let (tx, rx) = mpsc::channel::<(Command, mpsc::Sender<io::Result<Child>>)>();
        std::thread::Builder::new()
            .name("spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("spawner thread");
        Spawner { tx: Mutex::new(tx) }
    }

    fn spawn(&self, mut cmd: Command) -> io::Result<Child> {
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setpgid(0, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
                if libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                ) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        let (rtx, rrx) = mpsc::channel();
        self.tx
            .lock()
            .unwrap()
            .send((cmd, rtx))
            .map_err(|_| io::Error::other("spawner gone"))?;
        rrx.recv().map_err(|_| io::Error::other("spawner gone"))?
    }
}

const COLORS: [&str; 10] = ["36", "33", "32", "35", "34", "96", "93", "92", "95", "94"];

struct Logger {
    color: bool,
    width: usize,
    out: Mutex<()>,
}

impl Logger {
    fn line(&self, name: &str, color: usize, text: &str) {
        let _g = self.out.lock().unwrap();
        let mut out = io::stdout().lock();
        let prefix = format!("{name:<w$} |", w = self.width);
        if self.color {
            let _ = writeln!(
                out,
                "\x1b[{}m{prefix}\x1b[0m {text}",
                COLORS[color % COLORS.len()]
            );
        } else {
            let _ = writeln!(out, "{prefix} {text}");
        }
        let _ = out.flush();
    }

    fn say(&self, text: &str) {
        let _g = self.out.lock().unwrap();
        let mut out = io::stdout().lock();
        let _ = writeln!(out, "{text}");
        let _ = out.flush();
    }
}

struct ComponentPlan {
    comp: Component,
    color: usize,
    /// For proxies: the parsed config (rewritten per replica).
    config: Option<serde_json::Value>,
    config_file: Option<String>,
    /// Published ports: port in the mesh → host address.
    publish: BTreeMap<u16, SocketAddr>,
    /// Ports bound on the replica's own address (for address allocation).
    own_ports: Vec<u16>,
}

/// A running mesh.
pub struct Mesh {
    opts: UpOptions,
    topo: Topology,
    plans: Vec<ComponentPlan>,
    subnet: Ipv4Addr,
    run_dir: PathBuf,
    dns: DnsServer,
    replicas: Mutex<Vec<Replica>>,
    events: Mutex<mpsc::Sender<Event>>,
    spawner: Spawner,
    logger: Logger,
    scale_lock: Mutex<()>,
    stopping: AtomicBool,
    force: AtomicBool,
    scale_down_wait: Duration,
    token: String,
}

fn random_token() -> String {
    let mut buf = [0u8; 16];
    if let Ok(mut f) = File::open("/dev/urandom") {
        let _ = f.read_exact(&mut buf);
    }
    let t = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    buf.iter().map(|b| format!("{b:02x}")).collect::<String>()
        + &format!("{:x}", t as u64 ^ std::process::id() as u64)
}

/// Is `addr` free to listen on (TCP)?
pub fn port_free(addr: SocketAddr) -> bool {
    TcpListener::bind(addr).is_ok()
}

impl Mesh {
    /// Plans the mesh (configs parsed, ports checked, DNS started); nothing runs yet.
    pub fn new(opts: UpOptions, events: mpsc::Sender<Event>) -> anyhow::Result<Arc<Mesh>> {
        let topo = opts.topology.clone();
        for name in opts.scale.keys() {
            let c = topo
                .component(name)
                .ok_or_else(|| anyhow!("--scale: unknown component {name}"))?;
            if !c.publish.is_empty() && opts.scale[name] > 1 {
                bail!("{name} publishes ports: it cannot have more than 1 replica");
            }
        }
        let subnet = opts.subnet.unwrap_or(topo.subnet);
        if subnet.octets()[0] != 127 {
            bail!("subnet must be inside 127.0.0.0/8 (got {subnet})");
        }
        let publish_ip = opts.publish_address.unwrap_or(topo.publish_address);
        let refresh = opts
            .dns_refresh_rate
            .clone()
            .or(topo.dns.refresh_rate.clone());
        let dns_ip = IpAddr::V4(with_host(subnet, 1));
        let dns = DnsServer::start(SocketAddr::new(dns_ip, 0))
            .with_context(|| format!("cannot start the DNS server on {dns_ip}"))?;
        dns.set_ttl(topo.dns.ttl.unwrap_or(crate::dns::DEFAULT_TTL));

        let mut plans = Vec::new();
        let mut max_refresh = Duration::ZERO;
        for (i, c) in topo.components.iter().enumerate() {
            let mut publish = BTreeMap::new();
            for p in &c.publish {
                let from_env = p.env.as_ref().and_then(|e| std::env::var(e).ok());
                let host_port = match (opts.publish.get(&p.port), from_env) {
                    (Some(hp), _) => *hp,
                    (None, Some(v)) => v.trim().parse().with_context(|| {
                        format!("{}={v:?} is not a port", p.env.as_deref().unwrap_or(""))
                    })?,
                    (None, None) => p.host_port.unwrap_or(p.port),
                };
                publish.insert(p.port, SocketAddr::new(publish_ip, host_port));
            }
            let (config, config_file, own_ports) = if c.role == Role::Proxy && c.command.is_none() {
                let file = c.config.clone().unwrap();
                let text = topo.read_file(&file)?;
                let v = rewrite::parse_config(&text).with_context(|| format!("in {file}"))?;
                // Probe rewrite to learn the ports and refresh rate.
                let mut probe = v.clone();
                let out = rewrite::rewrite(
                    &mut probe,
                    &Rewrite {
                        ip: IpAddr::V4(with_host(subnet, 2)),
                        publish: publish.clone(),
                        dns: dns.local_addr(),
                        refresh_rate: refresh.clone(),
                    },
                );
                if let Some(r) = out.max_dns_refresh {
                    max_refresh = max_refresh.max(r);
                }
                let published: Vec<SocketAddr> = publish.values().copied().collect();
                let own: Vec<u16> = out
                    .listeners
                    .iter()
                    .chain(out.admin.iter())
                    .filter(|a| !published.contains(a))
                    .map(|a| a.port())
                    .collect();
                (Some(v), Some(file), own)
            } else {
                (None, None, c.ports.clone())
            };
            plans.push(ComponentPlan {
                comp: c.clone(),
                color: i,
                config,
                config_file,
                publish,
                own_ports,
            });
        }
        let ttl = Duration::from_secs(topo.dns.ttl.unwrap_or(crate::dns::DEFAULT_TTL) as u64);
        let scale_down_wait = max_refresh + ttl + opts.drain;

        let run_dir = match &opts.run_dir {
            Some(d) => d.clone(),
            None => {
                let base = std::env::var_os("XDG_RUNTIME_DIR")
                    .map(PathBuf::from)
                    .filter(|p| p.is_dir())
                    .unwrap_or_else(std::env::temp_dir);
                base.join(format!("sluice-up-{}", std::process::id()))
            }
        };
        std::fs::create_dir_all(run_dir.join("logs"))
            .with_context(|| format!("cannot create {}", run_dir.display()))?;

        let width = topo
            .components
            .iter()
            .map(|c| {
                c.name.len()
                    + 1
                    + digits(
                        opts.scale
                            .get(&c.name)
                            .copied()
                            .unwrap_or(c.replicas)
                            .max(1),
                    )
            })
            .max()
            .unwrap_or(8);
        Ok(Arc::new(Mesh {
            logger: Logger {
                color: opts.color,
                width,
                out: Mutex::new(()),
            },
            opts,
            topo,
            plans,
            subnet,
            run_dir,
            dns,
            replicas: Mutex::new(Vec::new()),
            events: Mutex::new(events),
            spawner: Spawner::new(),
            scale_lock: Mutex::new(()),
            stopping: AtomicBool::new(false),
            force: AtomicBool::new(false),
            scale_down_wait,
            token: random_token(),
        }))
    }

    /// The DNS server.
    pub fn dns(&self) -> &DnsServer {
        &self.dns
    }

    /// The run directory (per-replica configs and logs).
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// How long scaling down waits between leaving DNS and stopping a replica.
    pub fn scale_down_wait(&self) -> Duration {
        self.scale_down_wait
    }

    fn plan(&self, name: &str) -> anyhow::Result<&ComponentPlan> {
        self.plans
            .iter()
            .find(|p| p.comp.name == name)
            .ok_or_else(|| anyhow!("unknown component {name}"))
    }

    fn check_published_ports(&self) -> anyhow::Result<()> {
        for p in &self.plans {
            for (inner, host) in &p.publish {
                if !port_free(*host) {
                    let env = p
                        .comp
                        .publish
                        .iter()
                        .find(|x| x.port == *inner)
                        .and_then(|x| x.env.clone())
                        .map(|e| format!("{e}=PORT or "))
                        .unwrap_or_default();
                    bail!(
                        "port {} is already in use on {} ({} publishes {inner} there); free it or choose another with {env}-p HOST_PORT:{inner}",
                        host.port(),
                        host.ip(),
                        p.comp.name
                    );
                }
            }
        }
        Ok(())
    }

    /// A free address for a new replica of `plan` (all its own ports free there).
    fn allocate_ip(&self, plan: &ComponentPlan) -> anyhow::Result<Ipv4Addr> {
        let used: Vec<Ipv4Addr> = self
            .replicas
            .lock()
            .unwrap()
            .iter()
            .filter(|r| !matches!(r.state, RState::Exited(_)))
            .map(|r| r.ip)
            .collect();
        let mut last_busy = None;
        for host in 2..=254u8 {
            let ip = with_host(self.subnet, host);
            if used.contains(&ip) {
                continue;
            }
            match plan
                .own_ports
                .iter()
                .find(|p| !port_free(SocketAddr::new(IpAddr::V4(ip), **p)))
            {
                None => return Ok(ip),
                Some(p) => last_busy = Some(SocketAddr::new(IpAddr::V4(ip), *p)),
            }
        }
        bail!(
            "no free address in {}/24 for {} (last tried port in use: {})",
            self.subnet,
            plan.comp.name,
            last_busy.map(|a| a.to_string()).unwrap_or_default()
        )
    }

    fn say(&self, text: &str) {
        self.logger.say(text);
    }

    /// Starts every component in dependency order and waits for each to be ready.
    pub fn start_all(self: &Arc<Self>) -> anyhow::Result<()> {
        self.check_published_ports()?;
        let order: Vec<String> = self
            .topo
            .start_order()?
            .iter()
            .map(|c| c.name.clone())
            .collect();
        for name in order {
            let plan = self.plan(&name)?;
            let n = self
                .opts
                .scale
                .get(&name)
                .copied()
                .unwrap_or(plan.comp.replicas);
            for _ in 0..n {
                self.start_replica(&name)?;
            }
        }
        Ok(())
    }

    fn next_index(&self, comp: &str) -> u32 {
        let reps = self.replicas.lock().unwrap();
        let taken: Vec<u32> = reps
            .iter()
            .filter(|r| r.component == comp && !matches!(r.state, RState::Exited(_)))
            .map(|r| r.index)
            .collect();
        (1..).find(|i| !taken.contains(i)).unwrap()
    }

    fn command_for(
        &self,
        plan: &ComponentPlan,
        name: &str,
        index: u32,
        ip: Ipv4Addr,
    ) -> anyhow::Result<(Vec<String>, Vec<SocketAddr>, Option<SocketAddr>)> {
        let c = &plan.comp;
        let dir = self.run_dir.join(name);
        std::fs::create_dir_all(&dir)?;
        let ipa = IpAddr::V4(ip);
        let mut listeners: Vec<SocketAddr> =
            c.ports.iter().map(|p| SocketAddr::new(ipa, *p)).collect();
        let mut admin = None;
        let mut config_path = String::new();
        if let (Some(cfg), Some(file)) = (&plan.config, &plan.config_file) {
            let mut v = cfg.clone();
            let out = rewrite::rewrite(
                &mut v,
                &Rewrite {
                    ip: ipa,
                    publish: plan.publish.clone(),
                    dns: self.dns.local_addr(),
                    refresh_rate: self.opts.dns_refresh_rate.clone().or(self
                        .topo
                        .dns
                        .refresh_rate
                        .clone()),
                },
            );
            let base = Path::new(file)
                .file_name()
                .map(|s| s.to_string_lossy().into_owned());
            let path = dir.join(base.unwrap_or_else(|| "envoy.yaml".into()));
            std::fs::write(&path, rewrite::to_yaml(&v)?)?;
            config_path = path.display().to_string();
            listeners = out.listeners;
            admin = out.admin;
        }
        let mut policy_path = String::new();
        if let Some(pol) = &c.policy {
            let text = self.topo.read_file(pol)?;
            let base = Path::new(pol)
                .file_name()
                .map(|s| s.to_string_lossy().into_owned());
            let path = dir.join(base.unwrap_or_else(|| "policy.rego".into()));
            std::fs::write(&path, text)?;
            policy_path = path.display().to_string();
        }
        let port = c.ports.first().copied().unwrap_or(8080);
        let template: Vec<String> = match (&c.command, c.role) {
            (Some(cmd), _) => cmd.clone(),
            (None, Role::Proxy) => vec!["proxy".into(), "-c".into(), "{config}".into()],
            (None, Role::Authz) => vec![
                "authz".into(),
                "run".into(),
                "--server".into(),
                "--log-format=json-pretty".into(),
                "--addr={ip}:8181".into(),
                "--set=plugins.envoy_ext_authz_grpc.addr={ip}:{port}".into(),
                "--set=decision_logs.console=true".into(),
                "{policy}".into(),
            ],
            (None, Role::Service) => vec![
                "service".into(),
                "--name".into(),
                c.service_name.clone().unwrap_or_default(),
                "--listen".into(),
                "{ip}:{port}".into(),
                "--hostname".into(),
                "{hostname}".into(),
                "--resolved".into(),
                "{ip}".into(),
            ],
            (None, Role::Command) => unreachable!("validated"),
        };
        let args = template
            .iter()
            .map(|a| {
                a.replace("{ip}", &ip.to_string())
                    .replace("{hostname}", name)
                    .replace("{name}", &c.name)
                    .replace("{index}", &index.to_string())
                    .replace("{port}", &port.to_string())
                    .replace("{config}", &config_path)
                    .replace("{policy}", &policy_path)
            })
            .collect();
        Ok((args, listeners, admin))
    }

    /// Starts one more replica of `comp`, waits until it is ready, then adds it to DNS.
    pub fn start_replica(self: &Arc<Self>, comp: &str) -> anyhow::Result<String> {
        let plan = self.plan(comp)?;
        let index = self.next_index(comp);
        let name = format!("{comp}-{index}");
        let ip = self.allocate_ip(plan)?;
        let (args, listeners, admin) = self.command_for(plan, &name, index, ip)?;
        let external_proxy = match (&self.opts.proxy_exe, plan.comp.role, &plan.comp.command) {
            (Some(p), Role::Proxy, None) => Some(p.clone()),
            _ => None,
        };
        let mut cmd = match &external_proxy {
            Some(p) => {
                let mut c = Command::new(p);
                c.args(args.iter().skip(1)).arg("--disable-hot-restart");
                c
            }
            None => {
                let mut c = Command::new(&self.opts.exe);
                c.args(&args);
                c
            }
        };
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .current_dir(self.run_dir.join(&name))
            .env("SLUICE_REPLICA", &name)
            .env("NO_COLOR", "1")
            .envs(&plan.comp.environment);
        if let Some(n) = &plan.comp.service_name {
            cmd.env("SERVICE_NAME", n);
        }
        let mut child = self
            .spawner
            .spawn(cmd)
            .with_context(|| format!("cannot start {name} ({})", self.opts.exe.display()))?;
        let pid = child.id();
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let readers_done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut reps = self.replicas.lock().unwrap();
        // A replica that exited earlier under the same name leaves the list.
        reps.retain(|r| r.name != name);
        reps.push(Replica {
            component: comp.to_string(),
            index,
            name: name.clone(),
            ip,
            pid,
            state: RState::Starting,
            intentional: false,
            tail: tail.clone(),
            listeners: listeners.clone(),
            admin,
            started: SystemTime::now(),
        });
        drop(reps);
        let log_file = if self.opts.log_files {
            File::create(self.run_dir.join("logs").join(format!("{name}.log")))
                .ok()
                .map(|f| Arc::new(Mutex::new(f)))
        } else {
            None
        };
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let me = self.clone();
            let (name, tail, file, color) =
                (name.clone(), tail.clone(), log_file.clone(), plan.color);
            let done = readers_done.clone();
            std::thread::spawn(move || {
                let _done = DoneGuard(done);
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    {
                        let mut t = tail.lock().unwrap();
                        if t.len() == TAIL {
                            t.pop_front();
                        }
                        t.push_back(line.clone());
                    }
                    if let Some(f) = &file {
                        let _ = writeln!(f.lock().unwrap(), "{line}");
                    }
                    me.logger.line(&name, color, &line);
                }
            });
        }
        {
            let me = self.clone();
            let name = name.clone();
            std::thread::spawn(move || me.reap(child, name));
        }

        // Readiness.
        let deadline = Instant::now() + self.opts.ready_timeout;
        loop {
            let exited = matches!(
                self.replica_state(&name),
                Some(RState::Exited(_) | RState::Exiting) | None
            );
            if exited {
                // Let the log readers drain the pipes so the report shows the last lines.
                for _ in 0..50 {
                    if readers_done.load(Ordering::SeqCst) >= 2 {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            match self.replica_state(&name) {
                Some(RState::Exited(desc)) => {
                    bail!(
                        "{name} exited while starting ({desc}){}",
                        self.tail_text(&tail)
                    )
                }
                Some(RState::Exiting) | None => {
                    std::thread::sleep(Duration::from_millis(50));
                    if let Some(RState::Exited(desc)) = self.replica_state(&name) {
                        bail!(
                            "{name} exited while starting ({desc}){}",
                            self.tail_text(&tail)
                        )
                    }
                    bail!("{name} exited while starting{}", self.tail_text(&tail))
                }
                _ => {}
            }
            if self.stopping.load(Ordering::Relaxed) {
                bail!("interrupted while starting {name}");
            }
            if self.is_ready(plan, &listeners, admin) {
                break;
            }
            if Instant::now() >= deadline {
                self.stop_replicas(std::slice::from_ref(&name));
                bail!(
                    "{name} was not ready within {:?}{}",
                    self.opts.ready_timeout,
                    self.tail_text(&tail)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        {
            let mut reps = self.replicas.lock().unwrap();
            if let Some(r) = reps.iter_mut().find(|r| r.name == name) {
                if r.state == RState::Starting {
                    r.state = RState::Running;
                }
            }
        }
        self.dns.set(&name, vec![IpAddr::V4(ip)]);
        self.refresh_dns(comp);
        self.say(&format!("✔ {name} ready on {ip} (pid {pid})"));
        Ok(name)
    }

    fn tail_text(&self, tail: &Mutex<VecDeque<String>>) -> String {
        let t = tail.lock().unwrap();
        if t.is_empty() {
            return "; it printed nothing".into();
        }
        let mut s = String::from("; its last log lines:");
        for l in t.iter() {
            s.push_str("\n    ");
            s.push_str(l);
        }
        s
    }

    fn is_ready(
        &self,
        plan: &ComponentPlan,
        listeners: &[SocketAddr],
        admin: Option<SocketAddr>,
    ) -> bool {
        if plan.comp.role == Role::Proxy {
            if let Some(a) = admin {
                return http_ready(a);
            }
        }
        listeners
            .iter()
            .all(|a| TcpStream::connect_timeout(a, Duration::from_millis(300)).is_ok())
    }

    fn replica_state(&self, name: &str) -> Option<RState> {
        self.replicas
            .lock()
            .unwrap()
            .iter()
            .find(|r| r.name == name)
            .map(|r| r.state.clone())
    }

    /// Sets the component's DNS name to its running replicas.
    fn refresh_dns(&self, comp: &str) {
        let ips: Vec<IpAddr> = self
            .replicas
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.component == comp && r.state == RState::Running)
            .map(|r| IpAddr::V4(r.ip))
            .collect();
        self.dns.set(comp, ips);
    }

    fn reap(self: Arc<Self>, mut child: Child, name: String) {
        let pid = child.id() as libc::id_t;
        // Wait without reaping so the pid stays ours until we marked the replica.
        loop {
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            let r =
                unsafe { libc::waitid(libc::P_PID, pid, &mut info, libc::WEXITED | libc::WNOWAIT) };
            if r == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                break;
            }
        }
        let comp = {
            let mut reps = self.replicas.lock().unwrap();
            let r = reps.iter_mut().find(|r| r.name == name);
            r.map(|r| {
                r.state = RState::Exiting;
                r.component.clone()
            })
        };
        let status = child.wait();
        let desc = match status {
            Ok(s) => match (s.code(), std::os::unix::process::ExitStatusExt::signal(&s)) {
                (Some(c), _) => format!("exit code {c}"),
                (None, Some(sig)) => format!("killed by signal {sig}"),
                _ => "exited".into(),
            },
            Err(e) => format!("wait failed: {e}"),
        };
        let (unexpected, tail) = {
            let mut reps = self.replicas.lock().unwrap();
            match reps.iter_mut().find(|r| r.name == name) {
                Some(r) => {
                    r.state = RState::Exited(desc.clone());
                    (!r.intentional, r.tail.clone())
                }
                None => (false, Arc::default()),
            }
        };
        // Let the log readers catch the last lines.
        std::thread::sleep(Duration::from_millis(50));
        let tail = self.tail_text(&tail);
        self.dns.remove(&name);
        if let Some(comp) = comp {
            self.refresh_dns(&comp);
        }
        let _ = self.events.lock().unwrap().send(Event::Exited {
            name,
            desc,
            unexpected,
            tail,
        });
    }

    /// Signals the named replicas (their process groups) and waits for them; SIGKILL after a grace.
    fn stop_replicas(&self, names: &[String]) {
        let mut pids = Vec::new();
        {
            let mut reps = self.replicas.lock().unwrap();
            for r in reps.iter_mut().filter(|r| names.contains(&r.name)) {
                r.intentional = true;
                if r.state.signalable() {
                    r.state = RState::Stopping;
                    let sig = if self.force.load(Ordering::Relaxed) {
                        libc::SIGKILL
                    } else {
                        libc::SIGTERM
                    };
                    unsafe { libc::kill(-(r.pid as libc::pid_t), sig) };
                    pids.push(r.name.clone());
                }
            }
        }
        let deadline = Instant::now() + STOP_GRACE;
        let mut killed = false;
        for _ in 0..10_000 {
            let left: Vec<u32> = {
                let reps = self.replicas.lock().unwrap();
                reps.iter()
                    .filter(|r| pids.contains(&r.name) && r.state.signalable())
                    .map(|r| r.pid)
                    .collect()
            };
            let exiting = {
                let reps = self.replicas.lock().unwrap();
                reps.iter()
                    .any(|r| pids.contains(&r.name) && r.state == RState::Exiting)
            };
            if left.is_empty() && !exiting {
                return;
            }
            if !killed && (Instant::now() >= deadline || self.force.load(Ordering::Relaxed)) {
                let reps = self.replicas.lock().unwrap();
                for r in reps
                    .iter()
                    .filter(|r| pids.contains(&r.name) && r.state.signalable())
                {
                    unsafe { libc::kill(-(r.pid as libc::pid_t), libc::SIGKILL) };
                }
                killed = true;
            }
            if Instant::now() >= deadline + Duration::from_secs(5) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops everything, dependents first.
    pub fn stop_all(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        let order: Vec<String> = self
            .topo
            .start_order()
            .map(|o| o.iter().map(|c| c.name.clone()).collect())
            .unwrap_or_default();
        for comp in order.iter().rev() {
            let names: Vec<String> = {
                let mut reps = self.replicas.lock().unwrap();
                reps.iter_mut()
                    .filter(|r| &r.component == comp && r.state.signalable())
                    .map(|r| {
                        r.intentional = true;
                        r.name.clone()
                    })
                    .collect()
            };
            if !names.is_empty() {
                self.dns.remove(comp);
                self.stop_replicas(&names);
            }
        }
    }

    /// Changes the number of replicas of `comp`. Scaling down leaves DNS first, waits for the
    /// proxies to re-resolve and drain, then stops the replicas.
    pub fn scale(self: &Arc<Self>, comp: &str, n: u32) -> anyhow::Result<String> {
        let _g = self.scale_lock.lock().unwrap();
        let plan = self.plan(comp)?;
        if n > 1 && !plan.comp.publish.is_empty() {
            bail!("{comp} publishes ports: it cannot have more than 1 replica");
        }
        if self.stopping.load(Ordering::Relaxed) {
            bail!("the mesh is stopping");
        }
        let live: Vec<(u32, String)> = {
            let reps = self.replicas.lock().unwrap();
            let mut v: Vec<_> = reps
                .iter()
                .filter(|r| r.component == comp && r.state.alive())
                .map(|r| (r.index, r.name.clone()))
                .collect();
            v.sort();
            v
        };
        let have = live.len() as u32;
        if n > have {
            let mut started = Vec::new();
            for _ in have..n {
                started.push(self.start_replica(comp)?);
            }
            Ok(format!("{comp}: started {}", started.join(", ")))
        } else if n < have {
            let gone: Vec<String> = live
                .iter()
                .rev()
                .take((have - n) as usize)
                .map(|x| x.1.clone())
                .collect();
            {
                let mut reps = self.replicas.lock().unwrap();
                for r in reps.iter_mut().filter(|r| gone.contains(&r.name)) {
                    r.intentional = true;
                    r.state = RState::Stopping;
                }
            }
            for g in &gone {
                self.dns.remove(g);
            }
            self.refresh_dns(comp);
            self.say(&format!(
                "{} left DNS; stopping in {:.1}s (DNS refresh + drain)",
                gone.join(", "),
                self.scale_down_wait.as_secs_f64()
            ));
            std::thread::sleep(self.scale_down_wait);
            self.stop_replicas(&gone);
            Ok(format!("{comp}: stopped {}", gone.join(", ")))
        } else {
            Ok(format!("{comp}: already {n} replica(s)"))
        }
    }

    /// The replicas, for `ps`.
    pub fn ps(&self) -> PsReport {
        let reps = self.replicas.lock().unwrap();
        let mut replicas: Vec<ReplicaInfo> = reps
            .iter()
            .map(|r| ReplicaInfo {
                component: r.component.clone(),
                name: r.name.clone(),
                role: self
                    .plan(&r.component)
                    .map(|p| format!("{:?}", p.comp.role).to_lowercase())
                    .unwrap_or_default(),
                index: r.index,
                ip: IpAddr::V4(r.ip),
                pid: r.pid,
                state: r.state.text(),
                ports: r
                    .listeners
                    .iter()
                    .chain(r.admin.iter())
                    .map(|a| a.to_string())
                    .collect(),
            })
            .collect();
        let order: Vec<String> = self
            .topo
            .components
            .iter()
            .map(|c| c.name.clone())
            .collect();
        replicas.sort_by_key(|r| (order.iter().position(|c| c == &r.component), r.index));
        PsReport {
            name: self.topo.name.clone(),
            dns: self.dns.local_addr(),
            zone: self.dns.records(),
            replicas,
            scale_down_wait_ms: self.scale_down_wait.as_millis() as u64,
        }
    }

    /// URLs worth trying, from the published listeners.
    pub fn urls(&self) -> Vec<String> {
        let mut out = Vec::new();
        for p in &self.plans {
            let Some(cfg) = &p.config else { continue };
            let Some(listeners) = cfg["static_resources"]["listeners"].as_array() else {
                continue;
            };
            for l in listeners {
                let port = l["address"]["socket_address"]["port_value"]
                    .as_u64()
                    .unwrap_or(0) as u16;
                let Some(host) = p.publish.get(&port) else {
                    continue;
                };
                let tls = l["filter_chains"]
                    .as_array()
                    .map(|fc| fc.iter().any(|f| f.get("transport_socket").is_some()))
                    .unwrap_or(false);
                let hostname = if host.ip().is_loopback() || host.ip().is_unspecified() {
                    "localhost".to_string()
                } else {
                    host.ip().to_string()
                };
                let mut prefixes = Vec::new();
                collect_prefixes(l, &mut prefixes);
                if prefixes.is_empty() {
                    prefixes.push("/".into());
                }
                for pre in prefixes {
                    out.push(if tls {
                        format!("curl -k https://{hostname}:{}{pre}", host.port())
                    } else {
                        format!("curl -v http://{hostname}:{}{pre}", host.port())
                    });
                }
            }
            let admin_port = cfg["admin"]["address"]["socket_address"]["port_value"]
                .as_u64()
                .unwrap_or(0) as u16;
            if let Some(host) = p.publish.get(&admin_port) {
                out.push(format!(
                    "curl http://localhost:{}/ready     # {} admin",
                    host.port(),
                    p.comp.name
                ));
            }
        }
        out
    }

    fn send(&self, e: Event) {
        let _ = self.events.lock().unwrap().send(e);
    }
}

struct DoneGuard(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for DoneGuard {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn collect_prefixes(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(o) => {
            if let Some(p) = o
                .get("match")
                .and_then(|m| m.get("prefix"))
                .and_then(|p| p.as_str())
            {
                if !out.iter().any(|x| x == p) {
                    out.push(p.to_string());
                }
            }
            for x in o.values() {
                collect_prefixes(x, out);
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| collect_prefixes(x, out)),
        _ => {}
    }
}

fn digits(n: u32) -> usize {
    n.to_string().len()
}

fn with_host(subnet: Ipv4Addr, host: u8) -> Ipv4Addr {
    let o = subnet.octets();
    Ipv4Addr::new(o[0], o[1], o[2], host)
}

/// GET /ready on a proxy's admin: 200 and a body starting with LIVE.
pub fn http_ready(admin: SocketAddr) -> bool {
    match http_call(
        admin,
        "GET",
        "/ready",
        None,
        &[],
        Duration::from_millis(500),
    ) {
        Ok((200, body)) => body.trim_start().starts_with("LIVE"),
        _ => false,
    }
}

/// A minimal HTTP/1.1 client call (Connection: close) → (status, body).
pub fn http_call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let body = body.unwrap_or("");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        req.push_str("Content-Type: application/json\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes())?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| io::Error::other("bad HTTP answer"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other("bad status line"))?;
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    Ok((status, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    for _ in 0..100_000 {
        let Some((size, rest)) = s.split_once("\r\n") else {
            break;
        };
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Control API (HTTP/JSON on loopback) and the state file.

/// The default state directory: `$SLUICE_STATE_DIR`, else `/tmp/sluice-up-<uid>`.
pub fn default_state_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("SLUICE_STATE_DIR") {
        return PathBuf::from(d);
    }
    let uid = unsafe { libc::getuid() };
    std::env::temp_dir().join(format!("sluice-up-{uid}"))
}

/// Reads the state file of `state_dir`, if any.
pub fn read_state(state_dir: &Path) -> Option<StateFile> {
    let text = std::fs::read_to_string(state_dir.join("state.json")).ok()?;
    serde_json::from_str(&text).ok()
}

/// Is the process alive?
pub fn pid_alive(pid: u32) -> bool {
    unsafe {
        libc::kill(pid as libc::pid_t, 0) == 0
            || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
    }
}

/// The running mesh of `state_dir`, or an error saying there is none.
pub fn running_state(state_dir: &Path) -> anyhow::Result<StateFile> {
    match read_state(state_dir) {
        Some(s) if pid_alive(s.pid) => Ok(s),
        Some(_) => {
            let _ = std::fs::remove_file(state_dir.join("state.json"));
            bail!(
                "no mesh is running (removed a stale state file in {})",
                state_dir.display()
            )
        }
        None => bail!(
            "no mesh is running (no state file in {})",
            state_dir.display()
        ),
    }
}

/// Calls the control API of the running mesh.
pub fn control_call(
    state: &StateFile,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> anyhow::Result<serde_json::Value> {
    let (status, text) = http_call(
        state.control,
        method,
        path,
        body,
        &[("x-sluice-token", &state.token)],
        timeout,
    )
    .with_context(|| {
        format!(
            "cannot reach `sluice up` (pid {}) at {}",
            state.pid, state.control
        )
    })?;
    let v: serde_json::Value =
        serde_json::from_str(&text).unwrap_or(serde_json::json!({"error": text}));
    if status != 200 {
        bail!("{}", v["error"].as_str().unwrap_or("control API error"));
    }
    Ok(v)
}

fn write_state(dir: &Path, state: &StateFile) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!("state.json.{}", std::process::id()));
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(serde_json::to_string_pretty(state)?.as_bytes())?;
    }
    std::fs::rename(&tmp, dir.join("state.json"))?;
    Ok(())
}

fn serve_control(mesh: Arc<Mesh>, listener: TcpListener) {
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        let mesh = mesh.clone();
        std::thread::spawn(move || {
            let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
            let (status, body) = match read_request(&mut conn) {
                Ok(req) => handle_control(&mesh, req),
                Err(e) => (400, serde_json::json!({"error": e.to_string()})),
            };
            let body = body.to_string();
            let reason = if status == 200 { "OK" } else { "Error" };
            let _ = write!(
                conn,
                "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        });
    }
}

struct ControlRequest {
    method: String,
    path: String,
    token: Option<String>,
    body: String,
}

fn read_request(conn: &mut TcpStream) -> io::Result<ControlRequest> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("").to_string();
    let mut len = 0usize;
    let mut token = None;
    for _ in 0..100 {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            match k.trim().to_ascii_lowercase().as_str() {
                "content-length" => len = v.trim().parse().unwrap_or(0),
                "x-sluice-token" => token = Some(v.trim().to_string()),
                _ => {}
            }
        }
    }
    let mut body = vec![0u8; len.min(1 << 20)];
    reader.read_exact(&mut body)?;
    Ok(ControlRequest {
        method,
        path,
        token,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn handle_control(mesh: &Arc<Mesh>, req: ControlRequest) -> (u16, serde_json::Value) {
    use serde_json::json;
    if req.token.as_deref() != Some(mesh.token.as_str()) {
        return (403, json!({"error": "bad or missing x-sluice-token"}));
    }
    match (req.method.as_str(), req.path.as_str()) {
        ("GET", "/ps") => (200, serde_json::to_value(mesh.ps()).unwrap_or_default()),
        ("POST", "/scale") => {
            let v: serde_json::Value = match serde_json::from_str(&req.body) {
                Ok(v) => v,
                Err(e) => return (400, json!({"error": format!("bad JSON: {e}")})),
            };
            let Some(map) = v.get("scale").and_then(|m| m.as_object()) else {
                return (
                    400,
                    json!({"error": "expected {\"scale\": {\"component\": N}}"}),
                );
            };
            let mut done = Vec::new();
            for (comp, n) in map {
                let Some(n) = n.as_u64() else {
                    return (
                        400,
                        json!({"error": format!("{comp}: replicas must be a number")}),
                    );
                };
                match mesh.scale(comp, n as u32) {
                    Ok(msg) => done.push(msg),
                    Err(e) => return (500, json!({"error": format!("{e:#}"), "done": done})),
                }
            }
            (200, json!({"done": done}))
        }
        ("POST", "/down") => {
            mesh.send(Event::Down);
            (200, json!({"stopping": true}))
        }
        _ => (
            404,
            json!({"error": format!("no such endpoint {} {}", req.method, req.path)}),
        ),
    }
}

fn spawn_signal_thread(mesh: Arc<Mesh>) {
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                use tokio::signal::unix::{signal, SignalKind};
                let (Ok(mut int), Ok(mut term)) = (
                    signal(SignalKind::interrupt()),
                    signal(SignalKind::terminate()),
                ) else {
                    return;
                };
                let mut count = 0;
                for _ in 0..1000 {
                    tokio::select! {
                        _ = int.recv() => {}
                        _ = term.recv() => {}
                    }
                    count += 1;
                    mesh.stopping.store(true, Ordering::Relaxed);
                    if count == 1 {
                        mesh.say("Gracefully stopping... (press Ctrl-C again to force)");
                        mesh.send(Event::Signal);
                    } else {
                        mesh.force.store(true, Ordering::Relaxed);
                        let reps = mesh.replicas.lock().unwrap();
                        for r in reps.iter().filter(|r| r.state.signalable()) {
                            unsafe { libc::kill(-(r.pid as libc::pid_t), libc::SIGKILL) };
                        }
                    }
                }
            });
        })
        .expect("signal thread");
}

/// Runs `up` in the foreground until Ctrl-C, SIGTERM or `sluice down`. Returns the exit code.
pub fn run_up(opts: UpOptions) -> anyhow::Result<u8> {
    let state_dir = opts.state_dir.clone();
    if let Some(s) = read_state(&state_dir) {
        if pid_alive(s.pid) && s.pid != std::process::id() {
            bail!(
                "a mesh is already up (pid {}, state in {}); run `sluice down` first or use another --state-dir",
                s.pid,
                state_dir.display()
            );
        }
    }
    let keep_run_dir = opts.run_dir.is_some() || opts.log_files;
    let (tx, rx) = mpsc::channel();
    let mesh = Mesh::new(opts, tx)?;
    spawn_signal_thread(mesh.clone());
    let control = TcpListener::bind("127.0.0.1:0").context("control API")?;
    let control_addr = control.local_addr()?;
    {
        let mesh = mesh.clone();
        std::thread::Builder::new()
            .name("control".into())
            .spawn(move || serve_control(mesh, control))?;
    }
    let mut state = StateFile {
        pid: std::process::id(),
        control: control_addr,
        token: mesh.token.clone(),
        name: mesh.topo.name.clone(),
        run_dir: mesh.run_dir.clone(),
        dns: mesh.dns.local_addr(),
        ready: false,
    };
    write_state(&state_dir, &state)?;
    let cleanup = |mesh: &Arc<Mesh>| {
        mesh.stop_all();
        if read_state(&state_dir)
            .map(|s| s.pid == std::process::id())
            .unwrap_or(false)
        {
            let _ = std::fs::remove_file(state_dir.join("state.json"));
        }
        if !keep_run_dir {
            let _ = std::fs::remove_dir_all(&mesh.run_dir);
        }
    };
    mesh.say(&format!(
        "sluice up: {} ({} components), DNS on {}, run dir {}",
        mesh.topo.name,
        mesh.topo.components.len(),
        mesh.dns.local_addr(),
        mesh.run_dir.display()
    ));
    if let Err(e) = mesh.start_all() {
        let interrupted = mesh.stopping.load(Ordering::Relaxed);
        cleanup(&mesh);
        if interrupted {
            mesh.say("stopped");
            return Ok(130);
        }
        return Err(e);
    }
    state.ready = true;
    write_state(&state_dir, &state)?;
    let mut msg = format!("\nmesh {} is up. Try:\n", mesh.topo.name);
    for u in mesh.urls() {
        msg.push_str(&format!("  {u}\n"));
    }
    msg.push_str("  sluice lb-count      # tally which replica answers\n  sluice scale NAME=N  |  sluice ps  |  sluice down\n");
    mesh.say(&msg);

    let mut code = 0u8;
    for event in rx {
        match event {
            Event::Exited {
                name,
                desc,
                unexpected,
                tail,
            } => {
                if unexpected && !mesh.stopping.load(Ordering::Relaxed) {
                    mesh.say(&format!("✘ {name} exited unexpectedly ({desc}){tail}\n  the rest of the mesh keeps running"));
                }
            }
            Event::Signal => {
                code = 0;
                break;
            }
            Event::Down => {
                mesh.say("sluice down: stopping");
                break;
            }
        }
    }
    cleanup(&mesh);
    mesh.say("stopped");
    Ok(code)
}

/// `up -d`: re-runs `up` in the background with logs in files; returns when it is ready.
pub fn run_detached(argv: Vec<String>, state_dir: &Path, timeout: Duration) -> anyhow::Result<u8> {
    if let Some(s) = read_state(state_dir) {
        if pid_alive(s.pid) {
            bail!(
                "a mesh is already up (pid {}); run `sluice down` first",
                s.pid
            );
        }
    }
    std::fs::create_dir_all(state_dir)?;
    let log_path = state_dir.join("up.log");
    let log = File::create(&log_path)?;
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(&argv)
        .env("SLUICE_STATE_DIR", state_dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .context("cannot start the background `sluice up`")?;
    let pid = child.id();
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(s) = read_state(state_dir) {
            if s.pid == pid && s.ready {
                println!("mesh {} is up in the background (pid {pid})", s.name);
                println!(
                    "  logs: {} and {}/logs/",
                    log_path.display(),
                    s.run_dir.display()
                );
                println!("  sluice ps  |  sluice scale NAME=N  |  sluice down");
                let text = std::fs::read_to_string(&log_path).unwrap_or_default();
                if let Some(i) = text.find("Try:") {
                    print!("{}", &text[i..]);
                }
                return Ok(0);
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            eprintln!(
                "sluice up failed ({status}); last lines of {}:",
                log_path.display()
            );
            for l in tail.iter().rev() {
                eprintln!("  {l}");
            }
            return Ok(1);
        }
        if Instant::now() >= deadline {
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
            bail!(
                "the mesh was not ready within {timeout:?}; see {}",
                log_path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
