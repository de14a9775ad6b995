//! Run-time log levels, as Envoy's `/logging` admin endpoint changes them.
//!
//! Envoy has one logger per component (`http`, `router`, `upstream`, …); sluice logs through
//! `tracing`, one target per module. Each logger name below maps to the modules that do that
//! component's job in sluice, so `POST /logging?router=debug` turns on exactly the router's
//! messages, `?paths=http:trace,upstream:warning` several at once and `?level=debug` all of them.
//! The table and the active filter live in one process-wide [`LogControl`]; `sluice proxy`
//! installs its `tracing` subscriber with a reloadable filter and registers the reload function
//! here, so a change applies at once.

use std::sync::{Mutex, OnceLock};

/// Envoy's level names, lowest first (`warning`, not `warn`).
pub const LEVELS: [&str; 7] = ["trace", "debug", "info", "warning", "error", "critical", "off"];

/// Logger name → the `tracing` targets (module paths) that carry its messages in sluice.
const LOGGERS: &[(&str, &[&str])] = &[
    ("admin", &["sluice_proxy::admin"]),
    ("client", &["sluice_proxy::upstream::pool"]),
    ("config", &["sluice_config", "sluice_proxy::server"]),
    ("connection", &["sluice_proxy::listener"]),
    ("conn_handler", &["sluice_proxy::listener"]),
    ("dns", &["sluice_proxy::upstream::discovery", "hickory_resolver", "hickory_proto"]),
    ("ext_authz", &["sluice_proxy::filters::ext_authz"]),
    ("filter", &["sluice_proxy::filters"]),
    ("health_checker", &["sluice_proxy::upstream::health_checker"]),
    ("hc", &["sluice_proxy::filters::health_check"]),
    ("http", &["sluice_proxy::http"]),
    ("http2", &["h2"]),
    ("main", &["sluice_proxy::server", "sluice_proxy::cli"]),
    ("pool", &["sluice_proxy::upstream::pool"]),
    ("router", &["sluice_proxy::router"]),
    ("secret", &["sluice_proxy::tls"]),
    ("stats", &["sluice_proxy::stats"]),
    ("upstream", &["sluice_proxy::upstream"]),
];

type Reload = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// The process-wide log levels.
pub struct LogControl {
    /// `(global level, level per logger)`: the global level (command line, `?level=`) applies
    /// to everything that is not a listed logger (hyper, rustls, …).
    levels: Mutex<(&'static str, Vec<&'static str>)>,
    reload: OnceLock<Reload>,
}

/// The one control of this process; `default_level` is the starting level of every logger.
pub fn control() -> &'static LogControl {
    static CONTROL: OnceLock<LogControl> = OnceLock::new();
    CONTROL.get_or_init(LogControl::new)
}

/// Envoy's spelling of a level given on the command line (`warn` → `warning`).
pub fn envoy_level(level: &str) -> Option<&'static str> {
    match level {
        "warn" => Some("warning"),
        l => LEVELS.iter().copied().find(|x| *x == l),
    }
}

fn tracing_level(level: &str) -> &'static str {
    match level {
        "warning" => "warn",
        "critical" => "error",
        "trace" => "trace",
        "debug" => "debug",
        "info" => "info",
        "error" => "error",
        _ => "off",
    }
}

impl LogControl {
    fn new() -> LogControl {
        LogControl { levels: Mutex::new(("info", vec!["info"; LOGGERS.len()])), reload: OnceLock::new() }
    }

    /// Register the function that installs a new `tracing` filter directive string, and set
    /// every logger to `level`.
    pub fn install(&self, level: &str, reload: Reload) {
        let level = envoy_level(level).unwrap_or("info");
        let mut levels = self.levels.lock().unwrap_or_else(|e| e.into_inner());
        levels.0 = level;
        levels.1.iter_mut().for_each(|l| *l = level);
        drop(levels);
        let _ = self.reload.set(reload);
    }

    /// The `tracing` filter directives for the current levels: the global level as the default,
    /// then one directive per target of each logger whose level differs.
    pub fn directives(&self) -> String {
        let levels = self.levels.lock().unwrap_or_else(|e| e.into_inner());
        directives_for(levels.0, &levels.1)
    }

    /// Envoy's listing: `active loggers:` then `  name: level` per logger.
    pub fn listing(&self) -> String {
        let levels = self.levels.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::from("active loggers:\n");
        for ((name, _), level) in LOGGERS.iter().zip(levels.1.iter()) {
            out.push_str(&format!("  {name}: {level}\n"));
        }
        out
    }

    /// Apply an admin query (`level=`, `paths=`, `<name>=<level>`, `group=`); `Err` carries
    /// Envoy's error line.
    pub fn apply(&self, query: &[(String, String)]) -> Result<(), &'static str> {
        if query.len() > 1 {
            return Err("invalid number of parameters");
        }
        let mut levels = self.levels.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = levels.clone();
        let index = |name: &str| LOGGERS.iter().position(|(n, _)| *n == name);
        for (key, value) in query {
            match key.as_str() {
                "level" => {
                    let level = envoy_level(value).ok_or("unknown logger level")?;
                    next.0 = level;
                    next.1.iter_mut().for_each(|l| *l = level);
                }
                "paths" => {
                    for pair in value.split(',').filter(|p| !p.is_empty()) {
                        let (name, level) = pair.split_once(':').ok_or("empty logger name or empty logger level")?;
                        if name.trim().is_empty() || level.trim().is_empty() {
                            return Err("empty logger name or empty logger level");
                        }
                        let i = index(name.trim()).ok_or("unknown logger name")?;
                        next.1[i] = envoy_level(level.trim()).ok_or("unknown logger level")?;
                    }
                }
                "group" => {
                    let (name, level) = value.split_once(':').ok_or("unknown logger name")?;
                    let i = index(name.trim()).ok_or("unknown logger name")?;
                    next.1[i] = envoy_level(level.trim()).ok_or("unknown logger level")?;
                }
                name => {
                    let i = index(name).ok_or("unknown logger name")?;
                    next.1[i] = envoy_level(value).ok_or("unknown logger level")?;
                }
            }
        }
        *levels = next;
        let directives = directives_for(levels.0, &levels.1);
        drop(levels);
        if let Some(reload) = self.reload.get() {
            if let Err(e) = reload(&directives) {
                tracing::warn!("cannot change log levels: {e}");
            }
        }
        Ok(())
    }
}

fn directives_for(base: &str, levels: &[&'static str]) -> String {
    let mut parts = vec![tracing_level(base).to_string()];
    for ((_, targets), level) in LOGGERS.iter().zip(levels) {
        if *level != base {
            for t in *targets {
                parts.push(format!("{t}={}", tracing_level(level)));
            }
        }
    }
    parts.join(",")
}

/// Envoy's usage text after an error.
pub const USAGE: &str = "usage: /logging?<name>=<level> (change single level)\n\
usage: /logging?paths=name1:level1,name2:level2,... (change multiple levels)\n\
usage: /logging?level=<level> (change all levels)\n\
usage: /logging?group=<group_name>:<level> (change group of loggers)\n\
levels: trace debug info warning error critical off \n";

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn levels_change_per_logger_and_for_all() {
        let c = LogControl::new();
        assert_eq!(c.directives(), "info");
        c.apply(&q(&[("router", "debug")])).unwrap();
        assert!(c.listing().contains("  router: debug\n"), "{}", c.listing());
        // The global level stays the default; the router's targets get their own.
        assert_eq!(c.directives(), "info,sluice_proxy::router=debug");
        c.apply(&q(&[("paths", "http:trace,upstream:warning")])).unwrap();
        assert!(c.listing().contains("  http: trace\n") && c.listing().contains("  upstream: warning\n"));
        c.apply(&q(&[("level", "error")])).unwrap();
        assert_eq!(c.directives(), "error");
        assert_eq!(c.apply(&q(&[("level", "loud")])), Err("unknown logger level"));
        assert_eq!(c.apply(&q(&[("nope", "debug")])), Err("unknown logger name"));
        assert_eq!(c.apply(&q(&[("paths", "router:debug,nope:info")])), Err("unknown logger name"));
        assert_eq!(c.apply(&q(&[("paths", "router")])), Err("empty logger name or empty logger level"));
        assert_eq!(c.apply(&q(&[("router", "debug"), ("level", "info")])), Err("invalid number of parameters"));
        // A failed change changes nothing.
        assert!(c.listing().contains("  router: error\n"));
    }

    #[test]
    fn reload_receives_the_directives() {
        let c = LogControl::new();
        let seen = std::sync::Arc::new(Mutex::new(String::new()));
        let s = seen.clone();
        c.install("warn", Box::new(move |d| {
            *s.lock().unwrap() = d.to_string();
            Ok(())
        }));
        assert!(c.listing().contains("  admin: warning\n"));
        c.apply(&q(&[("admin", "trace")])).unwrap();
        assert!(seen.lock().unwrap().contains("sluice_proxy::admin=trace"), "{}", seen.lock().unwrap());
    }
}
