//! sluice's OPA-compatible ext_authz policy server (`sluice authz`).
//!
//! It answers Envoy's `envoy.service.auth.v3.Authorization/Check` over gRPC by evaluating Rego
//! policies with [regorus](https://crates.io/crates/regorus), reproducing OPA's
//! `envoy_ext_authz_grpc` plugin (OPA 0.63): the same `input` document ([`input`]), the same
//! mapping of decisions to `CheckResponse`s ([`response`]), the same console decision log
//! ([`decision_log`]), and OPA's `/health` and `/v1/data` HTTP API.
//!
//! # Library use
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use sluice_authz::{AuthzServer, Config};
//!
//! // Both listeners on 127.0.0.1, port 0.
//! let handle = AuthzServer::start(Config::loopback(vec!["policy.rego".into()])).await?;
//! let grpc = handle.grpc_addr();          // point an ext_authz client here
//! let http = handle.http_addr().unwrap(); // GET /health, POST /v1/data/...
//! // In-process decisions without sockets:
//! let resp = handle.authorizer().check(&Default::default());
//! # let _ = (grpc, http, resp);
//! handle.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! Evaluation is lock-free: each thread keeps a clone of the prepared regorus engine of the
//! current policy generation; a reload compiles a new generation and swaps it in atomically
//! ([`arc_swap`]), so checks in flight finish on the old one.
//!
//! One request cannot affect another: every evaluation runs under `catch_unwind`, and after a
//! panic or an error the thread's engine is discarded and rebuilt from the generation's
//! pristine copy ([`policy`]); each decision has a time budget; policies are bounded at load
//! (size, bracket nesting — regorus' parser is exponential in it —, rule chains, syntax-tree
//! depth: [`bounds`]). Builtins regorus lacks or gets wrong are added through its extension
//! mechanism ([`builtins`]: `io.jwt.*`, `crypto.*` hashes and HMACs, `net.cidr_*`,
//! `strings.render_template`, …); OPA builtins sluice does not provide are refused at load.
//!
//! Also here: bundles ([`bundle`], [`bundle_service`]), OPA's tools (`eval`, `test`, `check`,
//! `version`: [`tools`]), the REST and management API ([`api`]), and decision logs on the
//! console or uploaded to a service ([`decision_log`], [`decision_upload`]).

pub mod api;
pub mod bounds;
pub mod builtins;
pub mod bundle;
pub mod bundle_service;
pub mod cli;
pub mod decision_log;
pub mod decision_upload;
mod grpc_conn;
pub mod input;
pub mod policy;
pub mod reflection;
pub mod response;
pub mod server;
pub mod status;
pub mod tools;

pub use decision_log::{DecisionLogSink, LogFormat, SharedWriter};
pub use builtins::CustomBuiltin;
pub use policy::{EvalError, EvalStats, LoadOptions, PolicySet, RegoVersion};
pub use server::{Authorizer, AuthzServer, Config, Handle, DEFAULT_LABEL_VERSION};
