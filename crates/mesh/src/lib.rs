//! Local mesh runner: `sluice up/scale/ps/down`, the embedded DNS server, `lb-count`.
pub mod cli;
pub mod dns;
pub mod lbcount;
