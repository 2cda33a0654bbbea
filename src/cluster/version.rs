//! The cluster's Kubernetes version, read from the API server's `/version`, which decides
//! the preStop handler an `Auto` policy injects (native `sleep` from 1.30 on, SPEC §3).

use k8s_openapi::apimachinery::pkg::version::Info;

use super::ClusterError;
use crate::cli::KubernetesVersion;
use crate::engine::PreStopStyle;

/// Asks the API server for its version and returns the preStop style it supports.
pub async fn prestop_style(client: &kube::Client) -> Result<PreStopStyle, ClusterError> {
    let info = client
        .apiserver_version()
        .await
        .map_err(ClusterError::Version)?;
    let version = version_of(&info)?;
    let style = PreStopStyle::for_version(version.major, version.minor);
    tracing::info!(
        major = version.major,
        minor = version.minor,
        git_version = %info.git_version,
        prestop_style = ?style,
        "read the API server's version"
    );
    Ok(style)
}

/// The `major.minor` of a `/version` answer. `major` and `minor` are read first (managed
/// clusters report a minor like `33+`); some distributions leave them empty, so `gitVersion`
/// (`v1.33.2-eks-1234`) is the fallback.
pub fn version_of(info: &Info) -> Result<KubernetesVersion, ClusterError> {
    format!("{}.{}", info.major, info.minor)
        .parse()
        .or_else(|_| info.git_version.parse())
        .map_err(|_: String| ClusterError::UnknownVersion {
            major: info.major.clone(),
            minor: info.minor.clone(),
            git_version: info.git_version.clone(),
        })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn info(major: &str, minor: &str, git_version: &str) -> Info {
        Info {
            major: major.to_owned(),
            minor: minor.to_owned(),
            git_version: git_version.to_owned(),
            ..Info::default()
        }
    }

    #[test]
    fn versions_of_real_clusters() {
        let table = [
            (
                info("1", "33", "v1.33.1"),
                (1, 33),
                PreStopStyle::NativeSleep,
            ),
            (
                info("1", "30+", "v1.30.9-eks-8cce635"),
                (1, 30),
                PreStopStyle::NativeSleep,
            ),
            (
                info("1", "29+", "v1.29.12-gke.1120000"),
                (1, 29),
                PreStopStyle::Exec,
            ),
            (info("", "", "v1.28.3+k3s1"), (1, 28), PreStopStyle::Exec),
            (info("1", "", "v1.31.0"), (1, 31), PreStopStyle::NativeSleep),
        ];
        for (info, expected, style) in table {
            let version = version_of(&info).unwrap();
            assert_eq!((version.major, version.minor), expected, "{info:?}");
            assert_eq!(
                PreStopStyle::for_version(version.major, version.minor),
                style,
                "{info:?}"
            );
        }
    }

    #[test]
    fn an_unreadable_version_is_an_error_naming_it() {
        let error = version_of(&info("x", "y", "unknown")).unwrap_err();
        assert!(matches!(error, ClusterError::UnknownVersion { .. }));
        assert!(error.to_string().contains("unknown"), "{error}");
    }
}
