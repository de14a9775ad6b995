//! Local mesh runner: `sluice up/scale/ps/down`, the embedded DNS server, `lb-count`.
pub mod dns;
pub mod cli {
    use std::process::ExitCode;
    #[derive(clap::Args, Debug)]
    pub struct UpArgs {}
    #[derive(clap::Args, Debug)]
    pub struct ScaleArgs {}
    #[derive(clap::Args, Debug)]
    pub struct PsArgs {}
    #[derive(clap::Args, Debug)]
    pub struct DownArgs {}
    #[derive(clap::Args, Debug)]
    pub struct LbCountArgs {}
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
    pub fn lb_count(_: LbCountArgs) -> anyhow::Result<ExitCode> {
        anyhow::bail!("not built yet")
    }
}
