//! The `sluice` binary: argument parsing only. Every subcommand is implemented by a library
//! crate, which owns its `Args` (so `--help` text lives beside the code it describes).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "A service mesh in one binary: an Envoy-compatible proxy, an OPA-compatible \
             ext_authz server, the guide's demo service and a local mesh runner.",
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start; boxing the large variants would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run the data plane from an Envoy v3 static bootstrap (YAML or JSON).
    Proxy(sluice_proxy::cli::Args),
    /// Run the OPA-compatible ext_authz policy server (Envoy's Authorization gRPC API, Rego).
    Authz(sluice_authz::cli::Args),
    /// Run the guide's demo web service.
    Service(sluice_demo::Args),
    /// Start a whole mesh topology on this machine (the guide's by default).
    Up(sluice_mesh::cli::UpArgs),
    /// Change the number of replicas of a component while `sluice up` runs.
    Scale(sluice_mesh::cli::ScaleArgs),
    /// List the components and replicas of the running mesh.
    Ps(sluice_mesh::cli::PsArgs),
    /// Stop a mesh started with `sluice up` (also a detached one).
    Down(sluice_mesh::cli::DownArgs),
    /// Send N requests and tally which replica answered (the guide's counting script).
    LbCount(sluice_mesh::cli::LbCountArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Proxy(args) => sluice_proxy::cli::run(args),
        Command::Authz(args) => sluice_authz::cli::run(args),
        Command::Service(args) => sluice_demo::run(args),
        Command::Up(args) => sluice_mesh::cli::up(args),
        Command::Scale(args) => sluice_mesh::cli::scale(args),
        Command::Ps(args) => sluice_mesh::cli::ps(args),
        Command::Down(args) => sluice_mesh::cli::down(args),
        Command::LbCount(args) => sluice_mesh::cli::lb_count(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
