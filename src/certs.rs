//! Certificates for the webhook: a CA and a serving certificate signed by it (rcgen), for
//! `gracegate certs` and for `gracegate serve --dev-certs`.
//!
//! The API server dials the webhook as `<svc>.<ns>.svc:443` and checks that name against the
//! certificate's SANs; the CA goes into the MutatingWebhookConfiguration's `caBundle`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

use crate::cli::CertsArgs;

/// File name of the CA certificate.
pub const CA_FILE: &str = "ca.crt";
/// File name of the serving certificate.
pub const CERT_FILE: &str = "tls.crt";
/// File name of the serving key.
pub const KEY_FILE: &str = "tls.key";

/// Ten years: the CA outlives any serving certificate it signs, and rotating it means
/// re-registering the webhook's caBundle.
const CA_VALIDITY: Duration = Duration::days(3650);
/// One year, so the expiry metric and a yearly rotation have something to watch.
const SERVING_VALIDITY: Duration = Duration::days(365);
/// Clocks of API servers and nodes disagree a little; a certificate valid from "now" can
/// look not-yet-valid for a few seconds elsewhere.
const CLOCK_SKEW: Duration = Duration::minutes(5);

/// Why certificates could not be made or written.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// rcgen refused the parameters or failed to sign.
    #[error("cannot generate the certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// A file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// A CA and a serving certificate it signed, as PEM.
#[derive(Clone, Debug)]
pub struct Bundle {
    /// The CA certificate (the webhook's `caBundle`).
    pub ca_pem: String,
    /// The serving certificate.
    pub cert_pem: String,
    /// The serving certificate's private key (PKCS#8).
    pub key_pem: String,
}

/// The names the API server and in-cluster clients use for a Service:
/// `<svc>`, `<svc>.<ns>`, `<svc>.<ns>.svc`, `<svc>.<ns>.svc.cluster.local`.
pub fn service_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        service.to_owned(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ]
}

/// Generates a fresh CA and a serving certificate for `names` (DNS names or IP addresses).
pub fn generate(names: &[String]) -> Result<Bundle, CertError> {
    let now = OffsetDateTime::now_utc();

    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.distinguished_name = common_name("gracegate webhook CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params.not_before = now - CLOCK_SKEW;
    ca_params.not_after = now + CA_VALIDITY;
    let ca_cert = ca_params.self_signed(&ca_key)?;

    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(names.to_vec())?;
    params.distinguished_name = common_name(names.first().map_or("gracegate", String::as_str));
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = now - CLOCK_SKEW;
    params.not_after = now + SERVING_VALIDITY;
    let issuer = Issuer::new(ca_params, ca_key);
    let cert = params.signed_by(&key, &issuer)?;

    Ok(Bundle {
        ca_pem: ca_cert.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn common_name(name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn
}

impl Bundle {
    /// Writes `ca.crt`, `tls.crt` and `tls.key` (readable by the owner only) into `dir`,
    /// creating it. Each file is written whole and renamed into place, so a reader never
    /// sees half a file.
    pub fn write(&self, dir: &Path) -> Result<(), CertError> {
        std::fs::create_dir_all(dir).map_err(|source| CertError::Write {
            path: dir.to_owned(),
            source,
        })?;
        write_file(&dir.join(CA_FILE), &self.ca_pem, 0o644)?;
        write_file(&dir.join(KEY_FILE), &self.key_pem, 0o600)?;
        write_file(&dir.join(CERT_FILE), &self.cert_pem, 0o644)
    }

    /// The CA as the base64 text a `caBundle` field takes.
    pub fn ca_bundle(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(&self.ca_pem)
    }
}

fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), CertError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let error = |source| CertError::Write {
        path: path.to_owned(),
        source,
    };
    let temporary = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&temporary)
        .map_err(error)?;
    file.write_all(contents.as_bytes()).map_err(error)?;
    file.sync_all().map_err(error)?;
    std::fs::rename(&temporary, path).map_err(error)
}

/// The serving certificate and key of `--dev-certs DIR`: created, with a CA beside them,
/// when the folder does not hold both yet. Valid for `localhost`, `127.0.0.1`, `::1` and the
/// Service's names, so the same files serve a laptop and a cluster.
pub fn ensure_dev_certs(
    dir: &Path,
    service: &str,
    namespace: &str,
) -> Result<(PathBuf, PathBuf), CertError> {
    let cert = dir.join(CERT_FILE);
    let key = dir.join(KEY_FILE);
    if !(cert.is_file() && key.is_file()) {
        let mut names = vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ];
        names.extend(service_names(service, namespace));
        generate(&names)?.write(dir)?;
        tracing::info!(dir = %dir.display(), "created development certificates");
    }
    Ok((cert, key))
}

/// Runs `gracegate certs`: writes the files and prints the base64 caBundle.
pub fn run(args: &CertsArgs) -> anyhow::Result<ExitCode> {
    let bundle = generate(&service_names(&args.service, &args.namespace))?;
    bundle.write(&args.out)?;
    println!("{}", bundle.ca_bundle());
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use x509_parser::prelude::*;

    #[test]
    fn serving_certificate_names_the_service_and_chains_to_the_ca() {
        let bundle = generate(&service_names("gracegate", "platform")).unwrap();
        let (_, ca_pem) = parse_x509_pem(bundle.ca_pem.as_bytes()).unwrap();
        let ca = ca_pem.parse_x509().unwrap();
        assert!(ca.is_ca());
        let (_, pem) = parse_x509_pem(bundle.cert_pem.as_bytes()).unwrap();
        let cert = pem.parse_x509().unwrap();
        assert!(!cert.is_ca());
        let names: Vec<String> = cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|name| match name {
                GeneralName::DNSName(dns) => dns.to_string(),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(
            names,
            [
                "gracegate",
                "gracegate.platform",
                "gracegate.platform.svc",
                "gracegate.platform.svc.cluster.local"
            ]
        );
        assert_eq!(cert.issuer(), ca.subject());
        cert.verify_signature(Some(ca.public_key())).unwrap();
        let days = (cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp())
            / 86_400;
        assert_eq!(days, 365);
    }

    #[test]
    fn dev_certs_are_created_once() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = ensure_dev_certs(dir.path(), "gracegate", "gracegate").unwrap();
        let first = std::fs::read(&cert).unwrap();
        assert!(dir.path().join(CA_FILE).is_file());
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        ensure_dev_certs(dir.path(), "gracegate", "gracegate").unwrap();
        assert_eq!(
            std::fs::read(&cert).unwrap(),
            first,
            "kept, not regenerated"
        );
        let (_, pem) = parse_x509_pem(&first).unwrap();
        let text = format!(
            "{:?}",
            pem.parse_x509()
                .unwrap()
                .subject_alternative_name()
                .unwrap()
                .unwrap()
                .value
        );
        for name in ["localhost", "gracegate.gracegate.svc"] {
            assert!(text.contains(name), "{name} missing from {text}");
        }
        assert!(text.contains("[127, 0, 0, 1]"), "{text}");
    }
}
