//! TLS for the webhook: TLS 1.2 and 1.3 only, ALPN `h2` and `http/1.1`, and a serving
//! certificate that is swapped without a restart when its files change.
//!
//! Kubernetes updates a mounted Secret by writing a new folder and swapping the `..data`
//! symlink; the certificate file itself is never written, so a watch on it misses the
//! update. gracegate watches the folders that hold the files and re-reads both on any event
//! there, keeping the current certificate until the new pair loads and matches. A handshake
//! reads the current pair through an [`ArcSwap`], so no connection ever sees half a swap.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use notify::{RecursiveMode, Watcher as _};
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Why the serving certificate could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The certificate file holds no PEM certificate.
    #[error("{0} holds no PEM certificate")]
    NoCertificate(PathBuf),
    /// The key file holds no PEM private key.
    #[error("{0} holds no PEM private key")]
    NoKey(PathBuf),
    /// The certificate cannot be parsed.
    #[error("{path}: {message}")]
    BadCertificate {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// rustls refused the key, or the key does not belong to the certificate.
    #[error("{key} does not fit {cert}: {source}")]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls said.
        #[source]
        source: rustls::Error,
    },
    /// The folders could not be watched.
    #[error("cannot watch the certificate folders: {0}")]
    Watch(#[from] notify::Error),
}

/// A certificate and key pair as loaded.
struct Loaded {
    key: Arc<CertifiedKey>,
    files: Files,
}

/// What the files of a loaded pair held, and when its certificate expires.
struct Files {
    /// The PEM texts, to tell a real change from a touched file.
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    /// `notAfter` of the leaf certificate, in Unix seconds.
    not_after: i64,
}

/// The webhook's current serving certificate, read from two PEM files and reloadable.
pub struct ServingCertificate {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    current: ArcSwap<CertifiedKey>,
    /// The files of `current`; the lock orders concurrent reloads.
    loaded: Mutex<Files>,
}

impl std::fmt::Debug for ServingCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingCertificate")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .finish_non_exhaustive()
    }
}

impl ServingCertificate {
    /// Loads the pair, failing when it does not load or match.
    pub fn load(
        cert_path: &Path,
        key_path: &Path,
        provider: Arc<CryptoProvider>,
    ) -> Result<Arc<Self>, TlsError> {
        let loaded = read_pair(cert_path, key_path, &provider)?;
        Ok(Arc::new(Self {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            provider,
            current: ArcSwap::new(loaded.key),
            loaded: Mutex::new(loaded.files),
        }))
    }

    /// `notAfter` of the current certificate, in Unix seconds.
    pub fn not_after(&self) -> i64 {
        self.loaded.lock().map_or(0, |loaded| loaded.not_after)
    }

    /// Re-reads the files. Returns the new `notAfter` when the pair changed and was swapped
    /// in, `None` when the files are as they were; on error the current pair stays.
    pub fn reload(&self) -> Result<Option<i64>, TlsError> {
        let Ok(mut loaded) = self.loaded.lock() else {
            return Ok(None);
        };
        let cert_pem = read(&self.cert_path)?;
        let key_pem = read(&self.key_path)?;
        if cert_pem == loaded.cert_pem && key_pem == loaded.key_pem {
            return Ok(None);
        }
        let fresh = parse_pair(
            &self.cert_path,
            &self.key_path,
            cert_pem,
            key_pem,
            &self.provider,
        )?;
        let not_after = fresh.files.not_after;
        self.current.store(fresh.key);
        *loaded = fresh.files;
        Ok(Some(not_after))
    }

    /// A rustls server configuration that serves the current certificate: TLS 1.2 and 1.3,
    /// ALPN `h2` and `http/1.1`.
    pub fn server_config(self: &Arc<Self>) -> Result<ServerConfig, rustls::Error> {
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }

    /// Watches the folders of both files and reloads on any change there; `on_reload` gets
    /// the new `notAfter`. Every `poll` the files are also re-read, in case an event was
    /// missed (a folder replaced whole). Stops when the returned guard is dropped.
    pub fn watch(
        self: &Arc<Self>,
        poll: Duration,
        on_reload: impl Fn(i64) + Send + Sync + 'static,
    ) -> Result<CertificateWatch, TlsError> {
        let on_reload = Arc::new(on_reload);
        let reload = {
            let certificate = Arc::downgrade(self);
            let on_reload = on_reload.clone();
            move || {
                let Some(certificate) = certificate.upgrade() else {
                    return;
                };
                match certificate.reload() {
                    Ok(Some(not_after)) => {
                        tracing::info!(
                            cert = %certificate.cert_path.display(),
                            not_after,
                            "serving certificate reloaded"
                        );
                        on_reload(not_after);
                    }
                    Ok(None) => {}
                    // Mid-update (the certificate written, the key not yet): the next event
                    // brings the rest.
                    Err(error) => tracing::warn!(%error, "serving certificate not reloaded"),
                }
            }
        };
        let on_event = reload.clone();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if event.is_ok() {
                    on_event();
                }
            })?;
        let mut folders: Vec<PathBuf> = [&self.cert_path, &self.key_path]
            .iter()
            .map(|path| folder_of(path))
            .collect();
        folders.dedup();
        for folder in &folders {
            watcher.watch(folder, RecursiveMode::NonRecursive)?;
        }
        let poller = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(poll);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                reload();
            }
        });
        Ok(CertificateWatch {
            _watcher: watcher,
            poller,
        })
    }
}

impl ResolvesServerCert for ServingCertificate {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// Keeps the certificate watched while it lives.
#[derive(Debug)]
pub struct CertificateWatch {
    _watcher: notify::RecommendedWatcher,
    poller: tokio::task::JoinHandle<()>,
}

impl Drop for CertificateWatch {
    fn drop(&mut self) {
        self.poller.abort();
    }
}

fn folder_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
        _ => PathBuf::from("."),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

fn read_pair(
    cert_path: &Path,
    key_path: &Path,
    provider: &CryptoProvider,
) -> Result<Loaded, TlsError> {
    parse_pair(
        cert_path,
        key_path,
        read(cert_path)?,
        read(key_path)?,
        provider,
    )
}

fn parse_pair(
    cert_path: &Path,
    key_path: &Path,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    provider: &CryptoProvider,
) -> Result<Loaded, TlsError> {
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|error| TlsError::BadCertificate {
            path: cert_path.to_owned(),
            message: error.to_string(),
        })?;
    let leaf = chain
        .first()
        .ok_or_else(|| TlsError::NoCertificate(cert_path.to_owned()))?;
    let not_after = x509_parser::parse_x509_certificate(leaf)
        .map_err(|error| TlsError::BadCertificate {
            path: cert_path.to_owned(),
            message: error.to_string(),
        })?
        .1
        .validity()
        .not_after
        .timestamp();
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .ok()
        .flatten()
        .ok_or_else(|| TlsError::NoKey(key_path.to_owned()))?;
    let key =
        CertifiedKey::from_der(chain, key, provider).map_err(|source| TlsError::Mismatch {
            cert: cert_path.to_owned(),
            key: key_path.to_owned(),
            source,
        })?;
    Ok(Loaded {
        key: Arc::new(key),
        files: Files {
            cert_pem,
            key_pem,
            not_after,
        },
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::certs;

    fn provider() -> Arc<CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    #[test]
    fn loads_reloads_and_refuses_a_mismatched_pair() {
        let dir = tempfile::tempdir().unwrap();
        let first = certs::generate(&["localhost".to_owned()]).unwrap();
        first.write(dir.path()).unwrap();
        let cert = dir.path().join(certs::CERT_FILE);
        let key = dir.path().join(certs::KEY_FILE);
        let serving = ServingCertificate::load(&cert, &key, provider()).unwrap();
        let before = serving.current.load_full();
        assert!(serving.not_after() > 0);
        assert_eq!(serving.reload().unwrap(), None, "unchanged files");

        // A new certificate with the old key: refused, the old pair stays.
        let second = certs::generate(&["localhost".to_owned()]).unwrap();
        std::fs::write(&cert, &second.cert_pem).unwrap();
        assert!(matches!(serving.reload(), Err(TlsError::Mismatch { .. })));
        assert!(Arc::ptr_eq(&before, &serving.current.load_full()));

        // The key follows: swapped in.
        std::fs::write(&key, &second.key_pem).unwrap();
        assert!(serving.reload().unwrap().is_some());
        assert!(!Arc::ptr_eq(&before, &serving.current.load_full()));

        std::fs::write(&cert, "not a certificate").unwrap();
        assert!(matches!(serving.reload(), Err(TlsError::NoCertificate(_))));
        assert!(matches!(
            ServingCertificate::load(&dir.path().join("missing"), &key, provider()),
            Err(TlsError::Read { .. })
        ));
    }
}
