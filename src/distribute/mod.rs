//! Getting images onto hypervisor nodes: the chunk API client and the
//! delta pull built on it (see DESIGN.md, "Who uses it").

pub mod chain;
pub mod mcast;
pub mod pull;

pub use pull::{pull, PullError, PullOptions, PullReport};

/// Where an image being received into `out` is written until it is whole
/// (a hidden sibling, renamed over `out` at the end), so a reader of `out`
/// never sees a partial image.
pub(crate) fn partial_path(out: &std::path::Path, what: &str) -> std::path::PathBuf {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".into());
    out.with_file_name(format!(".{name}.strato-{what}"))
}
