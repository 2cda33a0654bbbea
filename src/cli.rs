//! Command-line interface: `gracegate serve`, `gracegate mutate`, `gracegate certs`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// gracegate: makes every pod rollout-safe (probes, preStop, grace period, ALB readiness gates).
#[derive(Debug, Parser)]
#[command(name = "gracegate", version, about, propagate_version = true)]
pub struct Cli {
    /// Log format on standard error.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "GRACEGATE_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTPS admission webhook.
    Serve(ServeArgs),
    /// Apply the engine offline to the Pods and pod templates of a multi-document YAML.
    Mutate(MutateArgs),
    /// Write a CA and a serving certificate for the webhook's Service.
    Certs(CertsArgs),
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// A Kubernetes `major.minor` version such as `1.33`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KubernetesVersion {
    /// Major version.
    pub major: u32,
    /// Minor version.
    pub minor: u32,
}

impl std::str::FromStr for KubernetesVersion {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim().trim_start_matches('v');
        let mut parts = text.split('.');
        let number = |part: Option<&str>| -> Option<u32> {
            // Accept "1.33", "1.33.2" and the "1.33+" that managed clusters report.
            part?.trim_end_matches('+').parse().ok()
        };
        match (number(parts.next()), number(parts.next())) {
            (Some(major), Some(minor)) => Ok(Self { major, minor }),
            _ => Err(format!("{text:?} is not a Kubernetes version like 1.33")),
        }
    }
}

/// `gracegate serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address of the HTTPS webhook listener.
    #[arg(long, default_value = "0.0.0.0:8443", env = "GRACEGATE_LISTEN")]
    pub listen: SocketAddr,
    /// PEM certificate chain of the webhook (reloaded when it changes).
    #[arg(
        long,
        requires = "tls_key",
        conflicts_with = "dev_certs",
        env = "GRACEGATE_TLS_CERT"
    )]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of the webhook (reloaded when it changes).
    #[arg(long, requires = "tls_cert", env = "GRACEGATE_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Create a CA and serving certificate in this folder when missing, and use them.
    #[arg(
        long,
        required_unless_present = "tls_cert",
        env = "GRACEGATE_DEV_CERTS"
    )]
    pub dev_certs: Option<PathBuf>,
    /// Address of the Prometheus metrics listener (plain HTTP).
    #[arg(long, default_value = "0.0.0.0:9090", env = "GRACEGATE_METRICS_LISTEN")]
    pub metrics_listen: SocketAddr,
    /// GracePolicy documents (YAML) to use instead of, or without, the cluster's.
    #[arg(long, env = "GRACEGATE_POLICY_FILE")]
    pub policy_file: Option<PathBuf>,
    /// Run without a cluster: no namespaces, Services or TargetGroupBindings are known.
    #[arg(long, env = "GRACEGATE_STANDALONE")]
    pub standalone: bool,
    /// Kubernetes version, which decides the preStop handler (native sleep from 1.30 on).
    /// Default: the API server's `/version`; in standalone mode, native sleep.
    #[arg(long, env = "GRACEGATE_KUBERNETES_VERSION")]
    pub kubernetes_version: Option<KubernetesVersion>,
    /// How long to keep serving after SIGTERM, while endpoints drop the pod.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration, env = "GRACEGATE_SHUTDOWN_DELAY")]
    pub shutdown_delay: Duration,
    /// Deny a pod when gracegate fails internally, instead of letting it through unchanged.
    #[arg(long, env = "GRACEGATE_FAIL_CLOSED")]
    pub fail_closed: bool,
    /// Service name put in dev certificates (with `--dev-certs`).
    #[arg(long, default_value = "gracegate", env = "GRACEGATE_SERVICE")]
    pub service: String,
    /// Namespace put in dev certificates (with `--dev-certs`).
    #[arg(long, default_value = "gracegate", env = "GRACEGATE_NAMESPACE")]
    pub namespace: String,
}

/// `gracegate mutate`.
#[derive(Debug, Args)]
pub struct MutateArgs {
    /// Multi-document YAML to read, or `-` for standard input.
    #[arg(short = 'f', long = "filename")]
    pub file: PathBuf,
    /// GracePolicy documents (YAML) to use besides those in the input.
    #[arg(long)]
    pub policy_file: Option<PathBuf>,
    /// What to print.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = OutputFormat::Yaml)]
    pub output: OutputFormat,
    /// Kubernetes version of the target cluster (decides the preStop handler); default: native sleep.
    #[arg(long)]
    pub kubernetes_version: Option<KubernetesVersion>,
}

/// Output of `gracegate mutate`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// The documents, mutated.
    Yaml,
    /// The JSON Patch of each workload.
    Patch,
    /// A unified diff per changed document.
    Diff,
    /// A table of what would change, per workload and container, and the warnings.
    Report,
}

/// `gracegate certs`.
#[derive(Debug, Args)]
pub struct CertsArgs {
    /// The webhook's Service name.
    #[arg(long, default_value = "gracegate")]
    pub service: String,
    /// The webhook's namespace.
    #[arg(long, default_value = "gracegate")]
    pub namespace: String,
    /// Folder to write `ca.crt`, `tls.crt` and `tls.key` to.
    #[arg(long)]
    pub out: PathBuf,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn kubernetes_versions() {
        let v: KubernetesVersion = "1.33".parse().unwrap();
        assert_eq!((v.major, v.minor), (1, 33));
        let v: KubernetesVersion = "v1.29.4".parse().unwrap();
        assert_eq!((v.major, v.minor), (1, 29));
        let v: KubernetesVersion = "1.30+".parse().unwrap();
        assert_eq!((v.major, v.minor), (1, 30));
        assert!("one.two".parse::<KubernetesVersion>().is_err());
    }
}
