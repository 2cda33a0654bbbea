//! (being written)
/// Runs `gracegate certs`.
pub fn run(_args: &crate::cli::CertsArgs) -> anyhow::Result<std::process::ExitCode> {
    anyhow::bail!("gracegate certs is not built yet")
}
