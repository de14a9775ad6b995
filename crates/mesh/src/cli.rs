//! The `sluice` subcommands this crate implements.
use std::process::ExitCode;

pub use crate::lbcount::LbCountArgs;

#[derive(clap::Args, Debug)]
pub struct UpArgs {}
#[derive(clap::Args, Debug)]
pub struct ScaleArgs {}
#[derive(clap::Args, Debug)]
pub struct PsArgs {}
#[derive(clap::Args, Debug)]
pub struct DownArgs {}
pub fn up(_: UpArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not built yet")
}
pub fn scale(_: ScaleArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not built yet")
}
pub fn ps(_: PsArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not built yet")
}
pub fn down(_: DownArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not built yet")
}

/// `sluice lb-count`.
pub fn lb_count(args: LbCountArgs) -> anyhow::Result<ExitCode> {
    crate::lbcount::run(args)
}
