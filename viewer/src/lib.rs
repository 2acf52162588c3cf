//! kdna-viewer: watch a kdna run's routers and child kernels while it trains.
//!
//! `run` reads a run directory as it grows; `views` draws its panels; `app` lays them out in
//! a window; `heatmap` holds the colour scales; `screenshot` renders the window without one;
//! `watch` wakes the window when the run's files change.

pub mod app;
pub mod heatmap;
pub mod run;
pub mod screenshot;
pub mod views;
pub mod watch;

pub use app::ViewerApp;
