//! (being written)
/// Runs `gracegate serve`.
pub fn run(_args: crate::cli::ServeArgs) -> anyhow::Result<std::process::ExitCode> {
    anyhow::bail!("gracegate serve is not built yet")
}
