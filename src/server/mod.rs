//! `gracegate serve`: the engine behind an HTTPS admission webhook.
//!
//! - [`router`]: the routes and the state they share;
//! - [`tls`]: TLS settings and the serving certificate, reloaded when its files change.
//!
//! [`Server::start`] binds both listeners and returns at once (tests start it on port 0);
//! [`run`] adds the process around it: runtime, signals, the shutdown sequence.

mod router;
mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum_server::Handle;
use axum_server::tls_rustls::RustlsConfig;
use tokio::task::JoinHandle;

pub use router::{AppState, MAX_BODY_BYTES, REQUEST_TIMEOUT, metrics_router, router};
pub use tls::{CertificateWatch, ServingCertificate, TlsError};

use crate::admission::FailureMode;
use crate::certs;
use crate::cli::ServeArgs;
use crate::cluster;
use crate::engine::PreStopStyle;
use crate::policy::{GracePolicy, PolicySet};
use crate::view::ClusterView;

/// How often the certificate files are re-read even without a file event.
const CERTIFICATE_POLL: Duration = Duration::from_secs(60);
/// How long in-flight requests get to finish once the listener closes: a request cannot
/// outlive [`REQUEST_TIMEOUT`], so a little more than that.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// What [`Server::start`] needs.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Address of the HTTPS webhook listener (port 0 picks one).
    pub listen: SocketAddr,
    /// Address of the plain-HTTP metrics listener.
    pub metrics_listen: SocketAddr,
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// Allow or deny pods when gracegate fails.
    pub failure: FailureMode,
    /// Whether a cluster watch will publish views: `/readyz` then waits for it.
    pub cluster_watched: bool,
}

/// A running webhook.
#[derive(Debug)]
pub struct Server {
    /// Where the webhook listens.
    pub address: SocketAddr,
    /// Where the metrics listen.
    pub metrics_address: SocketAddr,
    state: Arc<AppState>,
    handle: Handle<SocketAddr>,
    webhook: JoinHandle<std::io::Result<()>>,
    metrics: JoinHandle<std::io::Result<()>>,
    stop_metrics: tokio::sync::oneshot::Sender<()>,
    _certificate_watch: CertificateWatch,
}

impl Server {
    /// Loads the certificate, binds both listeners and starts serving `cluster`. With
    /// [`Settings::cluster_watched`], the caller feeds [`AppState::publish_cluster`] and
    /// [`AppState::set_cache_synced`] from its watch.
    pub async fn start(settings: Settings, cluster: ClusterView) -> anyhow::Result<Self> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certificate = ServingCertificate::load(&settings.cert, &settings.key, provider)?;
        let state = Arc::new(AppState::new(
            cluster,
            settings.failure,
            settings.cluster_watched,
        ));
        state
            .metrics
            .set_certificate_expiry(certificate.not_after());
        state.set_certificates_loaded();
        let certificate_watch = {
            let state = state.clone();
            certificate.watch(CERTIFICATE_POLL, move |not_after| {
                state.metrics.set_certificate_expiry(not_after);
            })?
        };
        let tls = RustlsConfig::from_config(Arc::new(certificate.server_config()?));

        let listener = std::net::TcpListener::bind(settings.listen)
            .with_context(|| format!("cannot listen on {}", settings.listen))?;
        listener.set_nonblocking(true)?;
        let address = listener.local_addr()?;
        let handle = Handle::new();
        let webhook = axum_server::from_tcp_rustls(listener, tls)?
            .handle(handle.clone())
            .serve(router(state.clone()).into_make_service());
        let webhook = tokio::spawn(webhook);

        let metrics_listener = tokio::net::TcpListener::bind(settings.metrics_listen)
            .await
            .with_context(|| format!("cannot listen on {}", settings.metrics_listen))?;
        let metrics_address = metrics_listener.local_addr()?;
        let (stop_metrics, stopped) = tokio::sync::oneshot::channel();
        let metrics = tokio::spawn(
            axum::serve(metrics_listener, metrics_router(state.clone()))
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .into_future(),
        );
        Ok(Self {
            address,
            metrics_address,
            state,
            handle,
            webhook,
            metrics,
            stop_metrics,
            _certificate_watch: certificate_watch,
        })
    }

    /// The state the handlers share.
    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    /// Stops accepting connections, lets in-flight requests finish (up to a few seconds),
    /// then stops the metrics listener.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.handle.graceful_shutdown(Some(DRAIN_TIMEOUT));
        let mut webhook = self.webhook;
        let result = match tokio::time::timeout(DRAIN_TIMEOUT * 2, &mut webhook).await {
            Ok(joined) => joined,
            Err(_) => {
                // The graceful signal can be missed while the accept loop is between two
                // connections; a hard stop is the backstop.
                self.handle.shutdown();
                webhook.await
            }
        };
        result.context("the webhook listener task failed")??;
        let _ = self.stop_metrics.send(());
        self.metrics
            .await
            .context("the metrics listener task failed")??;
        Ok(())
    }
}

/// Runs `gracegate serve` until SIGTERM or ctrl-c.
pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    // kube's client and any TLS code without an explicit provider need the process-wide one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(args))
}

async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    // Before anything else: a SIGTERM during start-up must not kill the process unannounced.
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot listen for SIGTERM")?;
    let (cert, key) = match (&args.tls_cert, &args.tls_key, &args.dev_certs) {
        (Some(cert), Some(key), _) => (cert.clone(), key.clone()),
        (_, _, Some(dir)) => certs::ensure_dev_certs(dir, &args.service, &args.namespace)?,
        _ => anyhow::bail!("give --tls-cert and --tls-key, or --dev-certs DIR"),
    };
    let policies = match &args.policy_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            GracePolicy::from_yaml_documents(&text)?
        }
        None => Vec::new(),
    };
    let client = if args.standalone {
        None
    } else {
        Some(kube::Client::try_default().await.context(
            "cannot reach the cluster (in-cluster config or KUBECONFIG); \
             run with --standalone to serve without one",
        )?)
    };
    // An explicit --kubernetes-version wins; else the API server says; standalone: native.
    let prestop_style = match (args.kubernetes_version, &client) {
        (Some(version), _) => PreStopStyle::for_version(version.major, version.minor),
        (None, Some(client)) => cluster::prestop_style(client).await?,
        (None, None) => PreStopStyle::NativeSleep,
    };
    let cluster = ClusterView::new(PolicySet::new(policies.clone())?, prestop_style);
    let settings = Settings {
        listen: args.listen,
        metrics_listen: args.metrics_listen,
        cert,
        key,
        failure: if args.fail_closed {
            FailureMode::Closed
        } else {
            FailureMode::Open
        },
        cluster_watched: client.is_some(),
    };
    let server = Server::start(settings, cluster).await?;
    if let Some(client) = client {
        tokio::spawn(watch_cluster(
            client,
            policies,
            prestop_style,
            server.state().clone(),
        ));
    }
    tracing::info!(
        address = %server.address,
        metrics_address = %server.metrics_address,
        standalone = args.standalone,
        "listening"
    );

    shutdown_signal(&mut terminate).await?;
    let delay_ms = u64::try_from(args.shutdown_delay.as_millis()).unwrap_or(u64::MAX);
    tracing::info!(delay_ms, "shutting down: not ready, still serving");
    server.state().begin_shutdown();
    tokio::time::sleep(args.shutdown_delay).await;
    tracing::info!("closing the listener, finishing in-flight requests");
    server.stop().await?;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// Keeps `state`'s view of the cluster current. Should the watch ever stop, readiness goes
/// with it: a replica with a frozen view must not take traffic.
async fn watch_cluster(
    client: kube::Client,
    policies: Vec<GracePolicy>,
    prestop_style: PreStopStyle,
    state: Arc<AppState>,
) {
    let publish = {
        let state = state.clone();
        move |view| state.publish_cluster(view)
    };
    let synced = {
        let state = state.clone();
        move |resource, synced| state.set_cache_synced(resource, synced)
    };
    let result = cluster::watch(client, policies, prestop_style, publish, synced).await;
    let error = result
        .err()
        .map(|error| error.to_string())
        .unwrap_or_default();
    tracing::error!(%error, "the cluster watch stopped; not ready from now on");
    for resource in cluster::Resource::ALL {
        state.set_cache_synced(resource.name(), false);
    }
}

/// Resolves on the first SIGTERM (the kubelet stopping the pod) or ctrl-c.
async fn shutdown_signal(terminate: &mut tokio::signal::unix::Signal) -> anyhow::Result<()> {
    tokio::select! {
        _ = terminate.recv() => tracing::info!(signal = "SIGTERM", "signal received"),
        result = tokio::signal::ctrl_c() => {
            result.context("cannot listen for ctrl-c")?;
            tracing::info!(signal = "SIGINT", "signal received");
        }
    }
    Ok(())
}
