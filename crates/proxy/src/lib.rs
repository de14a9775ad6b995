//! sluice's data plane (scaffold; filled in by the proxy work).
pub mod cli {
    use std::process::ExitCode;
    /// Arguments of `sluice proxy`.
    #[derive(clap::Args, Debug)]
    pub struct Args {}
    pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
        anyhow::bail!("sluice proxy: not built yet")
    }
}
