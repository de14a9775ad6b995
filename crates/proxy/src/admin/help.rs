//! The admin endpoint table, in the order and words of Envoy 1.40's `/help`.

/// One admin endpoint.
pub struct Endpoint {
    pub path: &'static str,
    /// Mutating endpoints answer 405 to anything but POST.
    pub post: bool,
    pub help: &'static str,
    /// Query parameters: (name, help).
    pub params: &'static [(&'static str, &'static str)],
}

pub const ENDPOINTS: &[Endpoint] = &[
    Endpoint {
        path: "/",
        post: false,
        help: "Admin home page",
        params: &[],
    },
    Endpoint {
        path: "/allocprofiler",
        post: true,
        help: "enable/disable the allocation profiler (if supported)",
        params: &[("enable", "enable/disable the allocation profiler; One of (y, n)")],
    },
    Endpoint {
        path: "/certs",
        post: false,
        help: "print certs on machine",
        params: &[],
    },
    Endpoint {
        path: "/clusters",
        post: false,
        help: "upstream cluster status",
        params: &[("filter", "Regular expression (Google re2) for filtering clusters by name")],
    },
    Endpoint {
        path: "/config_dump",
        post: false,
        help: "dump current Envoy configs",
        params: &[("resource", "The resource to dump"), ("mask", "The mask to apply. When both resource and mask are specified, the mask is applied to every element in the desired repeated field so that only a subset of fields are returned. The mask is parsed as a Protobuf::FieldMask"), ("name_regex", "Dump only the currently loaded configurations whose names match the specified regex. Can be used with both resource and mask query parameters."), ("include_eds", "Dump currently loaded configuration including EDS. See the response definition for more information")],
    },
    Endpoint {
        path: "/contention",
        post: false,
        help: "dump current Envoy mutex contention stats (if enabled)",
        params: &[],
    },
    Endpoint {
        path: "/cpuprofiler",
        post: true,
        help: "enable/disable the CPU profiler",
        params: &[("enable", "enables the CPU profiler; One of (y, n)")],
    },
    Endpoint {
        path: "/drain_listeners",
        post: true,
        help: "drain listeners",
        params: &[("graceful", "When draining listeners, enter a graceful drain period prior to closing listeners. This behaviour and duration is configurable via server options or CLI"), ("skip_exit", "When draining listeners, drain the connections but never stop the listeners. The graceful parameter has no effect when this is set, since the drain period only delays stopping the listeners"), ("inboundonly", "Drains all inbound listeners. traffic_direction field in envoy_v3_api_msg_config.listener.v3.Listener is used to determine whether a listener is inbound or outbound.")],
    },
    Endpoint {
        path: "/healthcheck/fail",
        post: true,
        help: "cause the server to fail health checks",
        params: &[],
    },
    Endpoint {
        path: "/healthcheck/ok",
        post: true,
        help: "cause the server to pass health checks",
        params: &[],
    },
    Endpoint {
        path: "/heap_dump",
        post: false,
        help: "dump current Envoy heap (if supported)",
        params: &[],
    },
    Endpoint {
        path: "/heapprofiler",
        post: true,
        help: "enable/disable the heap profiler",
        params: &[("enable", "enable/disable the heap profiler; One of (y, n)")],
    },
    Endpoint {
        path: "/help",
        post: false,
        help: "print out list of admin commands",
        params: &[],
    },
    Endpoint {
        path: "/hot_restart_version",
        post: false,
        help: "print the hot restart compatibility version",
        params: &[],
    },
    Endpoint {
        path: "/init_dump",
        post: false,
        help: "dump current Envoy init manager information (experimental)",
        params: &[("mask", "The desired component to dump unready targets. The mask is parsed as a Protobuf::FieldMask. For example, get the unready targets of all listeners with /init_dump?mask=listener`")],
    },
    Endpoint {
        path: "/listeners",
        post: false,
        help: "print listener info",
        params: &[("format", "File format to use; One of (text, json)")],
    },
    Endpoint {
        path: "/logging",
        post: true,
        help: "query/change logging levels",
        params: &[("paths", "Change multiple logging levels by setting to <logger_name1>:<desired_level1>,<logger_name2>:<desired_level2>. If fine grain logging is enabled, use __FILE__ or a glob experision as the logger name. For example, source/common*:warning"), ("group", "Change given logger group to desired level, set to <logger_group_name>:<desired_level>. logger_group_name must be a logger name."), ("level", "desired logging level, this will change all loggers's level; One of (, trace, debug, info, warning, error, critical, off)")],
    },
    Endpoint {
        path: "/memory",
        post: false,
        help: "print current allocation/heap usage",
        params: &[],
    },
    Endpoint {
        path: "/memory/tcmalloc",
        post: false,
        help: "print TCMalloc stats",
        params: &[],
    },
    Endpoint {
        path: "/peak_heap_dump",
        post: false,
        help: "dump peak Envoy heap (if supported)",
        params: &[],
    },
    Endpoint {
        path: "/quitquitquit",
        post: true,
        help: "exit the server",
        params: &[],
    },
    Endpoint {
        path: "/ready",
        post: false,
        help: "print server state, return 200 if LIVE, otherwise return 503",
        params: &[],
    },
    Endpoint {
        path: "/reopen_logs",
        post: true,
        help: "reopen access logs",
        params: &[],
    },
    Endpoint {
        path: "/reset_counters",
        post: true,
        help: "reset all counters to zero",
        params: &[],
    },
    Endpoint {
        path: "/runtime",
        post: false,
        help: "print runtime values",
        params: &[],
    },
    Endpoint {
        path: "/runtime_modify",
        post: true,
        help: "Adds or modifies runtime values as passed in query parameters. To delete a previously added key, use an empty string as the value. Note that deletion only applies to overrides added via this endpoint; values loaded from disk can be modified via override but not deleted. E.g. ?key1=value1&key2=value2...",
        params: &[],
    },
    Endpoint {
        path: "/server_info",
        post: false,
        help: "print server version/status information",
        params: &[],
    },
    Endpoint {
        path: "/stats",
        post: false,
        help: "print server stats",
        params: &[("usedonly", "Only include stats that have been written by system since restart"), ("filter", "Regular expression (Google re2) for filtering stats"), ("invert_filter", "Invert the filter regex"), ("format", "Format to use; One of (html, active-html, text, json)"), ("type", "Stat types to include.; One of (All, Counters, Histograms, Gauges, TextReadouts)"), ("histogram_buckets", "Histogram bucket display mode; One of (cumulative, disjoint, detailed, summary)")],
    },
    Endpoint {
        path: "/stats/prometheus",
        post: false,
        help: "print server stats in prometheus format",
        params: &[("usedonly", "Only include stats that have been written by system since restart"), ("text_readouts", "Render text_readouts as new gaugues with value 0 (increases Prometheus data size)"), ("filter", "Regular expression (Google re2) for filtering stats"), ("invert_filter", "Invert the filter regex"), ("histogram_buckets", "Histogram bucket display mode; One of (cumulative, summary)")],
    },
    Endpoint {
        path: "/stats/recentlookups",
        post: false,
        help: "Show recent stat-name lookups",
        params: &[],
    },
    Endpoint {
        path: "/stats/recentlookups/clear",
        post: true,
        help: "clear list of stat-name lookups and counter",
        params: &[],
    },
    Endpoint {
        path: "/stats/recentlookups/disable",
        post: true,
        help: "disable recording of reset stat-name lookup names",
        params: &[],
    },
    Endpoint {
        path: "/stats/recentlookups/enable",
        post: true,
        help: "enable recording of reset stat-name lookup names",
        params: &[],
    },
];

/// The `/help` text (also the body of a 404 after `invalid path. `).
pub fn help_text() -> String {
    let mut out = String::from("admin commands are:\n");
    for e in ENDPOINTS {
        out.push_str("  ");
        out.push_str(e.path);
        if e.post {
            out.push_str(" (POST)");
        }
        out.push_str(": ");
        out.push_str(e.help);
        out.push('\n');
        for (name, help) in e.params {
            out.push_str("      ");
            out.push_str(name);
            out.push_str(": ");
            out.push_str(help);
            out.push('\n');
        }
    }
    out
}

pub fn find(path: &str) -> Option<&'static Endpoint> {
    ENDPOINTS.iter().find(|e| e.path == path)
}
