//! Local mesh runner: `sluice up/scale/ps/down`, the embedded DNS server, `lb-count`.
//!
//! - [`dns`]: the authoritative DNS server with a mutable zone;
//! - [`topology`]: the topology file (`examples/guide/mesh.yaml`, built in);
//! - [`rewrite`]: per-replica rewriting of Envoy bootstraps;
//! - [`up`]: process supervision, scaling, the control API and state file;
//! - [`lbcount`]: `sluice lb-count`;
//! - [`cli`]: the clap `Args` and entry points the `sluice` binary calls.
pub mod cli;
pub mod dns;
pub mod lbcount;
pub mod rewrite;
pub mod topology;
pub mod up;
