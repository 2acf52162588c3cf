//! The `kdna` command line.

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use kdna::gpu::{AdapterSummary, adapter};

#[derive(Parser)]
#[command(
    name = "kdna",
    version,
    about = "Train KernelDNA convolutional networks on any GPU (WGSL kernels through wgpu)"
)]
struct Cli {
    /// Run on the first adapter whose name contains this text (case-insensitive); see
    /// `kdna devices`. WGPU_ADAPTER_NAME does the same; WGPU_BACKEND limits the backends
    /// searched (vulkan, metal, dx12, gl).
    #[arg(long, global = true, value_name = "SUBSTRING")]
    adapter: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List every GPU adapter wgpu can reach, with the features and limits kdna uses.
    Devices,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Devices => devices(cli.adapter.as_deref()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn devices(filter: Option<&str>) -> Result<()> {
    let instance = adapter::instance();
    let adapters = adapter::enumerate(&instance);
    let summaries: Vec<AdapterSummary> = adapters.iter().map(AdapterSummary::of).collect();
    let chosen = AdapterSummary::of(&adapter::choose(adapters, filter)?);
    for s in &summaries {
        let mark = if s.name == chosen.name && s.backend == chosen.backend { "*" } else { " " };
        println!("{mark} {} ({:?}, {:?})", s.name, s.backend, s.device_type);
        println!("    driver: {} {}", s.driver, s.driver_info);
        println!(
            "    features: timestamps {}, f16 {}, subgroups {}",
            yes_no(s.timestamps),
            yes_no(s.shader_f16),
            yes_no(s.subgroups)
        );
        println!(
            "    limits: storage binding {}, buffer {}, workgroup storage {}, invocations/workgroup {}",
            bytes(s.max_storage_buffer_binding),
            bytes(s.max_buffer_size),
            bytes(s.max_workgroup_storage as u64),
            s.max_invocations_per_workgroup
        );
    }
    println!("The adapter marked * is the one kdna uses; choose another with --adapter SUBSTRING.");
    Ok(())
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

fn bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{} MiB", n >> 20),
        n if n >= 1 << 10 => format!("{} KiB", n >> 10),
        n => format!("{n} B"),
    }
}
