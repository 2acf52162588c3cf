//! `kdna-viewer [RUN_DIR]`: a window onto a kdna run, live while it trains.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use kdna_viewer::{ViewerApp, screenshot};

#[derive(Parser)]
#[command(
    name = "kdna-viewer",
    version,
    about = "Watch a kdna run's router gates and child kernels while it trains",
    after_help = "Open a run as it trains: `kdna train --log-dir runs/demo` in one terminal, \
                  `kdna viewer runs/demo` in another. Telemetry comes from `kdna train --telemetry-every N`."
)]
struct Cli {
    /// The run directory (kdna train's --log-dir) [default: the newest run under ./runs].
    run_dir: Option<PathBuf>,
    /// Render the main views of RUN_DIR to this PNG without opening a window, then exit.
    #[arg(long, value_name = "OUT.png", requires = "run_dir")]
    screenshot: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.screenshot {
        Some(out) => screenshot::write(cli.run_dir.as_deref().expect("required by clap"), out),
        None => window(cli.run_dir),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kdna-viewer: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn window(run_dir: Option<PathBuf>) -> anyhow::Result<()> {
    let options = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default().with_inner_size([1500.0, 1000.0]).with_title("kdna viewer"),
        ..Default::default()
    };
    eframe::run_native("kdna viewer", options, Box::new(move |_| Ok(Box::new(ViewerApp::new(run_dir.as_deref())))))
        .map_err(|e| anyhow::anyhow!("opening a window: {e} (is there a display? try --screenshot OUT.png)"))
}
