//! (being written)
/// Runs `gracegate mutate`.
pub fn run(_args: &crate::cli::MutateArgs) -> anyhow::Result<std::process::ExitCode> {
    anyhow::bail!("gracegate mutate is not built yet")
}
