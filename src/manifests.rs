//! Offline mode, `gracegate mutate`: the engine applied to every Pod and pod template of a
//! multi-document YAML, with the Namespaces, Services, TargetGroupBindings and GracePolicies
//! of the same input playing the cluster's part.
//!
//! Documents come back in the same order. A document that does not change is written back
//! byte for byte; a changed one is re-written (keeping the comments above it).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use json_patch::Patch;
use serde_json::{Value, json};

use crate::cli::{MutateArgs, OutputFormat};
use crate::engine::{self, EngineError, Mutation, PreStopStyle};
use crate::patch;
use crate::policy::{self, GracePolicy, PolicyError, PolicySet};
use crate::view::{AlbObjects, BindingView, ClusterView, NamespaceView, ServiceView};
use crate::yaml::{self, Document, YamlError};

/// Exit code for bad input (unreadable file, bad YAML, invalid policy), as for a bad flag.
const EXIT_BAD_INPUT: u8 = 2;
/// Namespace of namespaced objects that name none, as `kubectl apply` without `-n`.
const DEFAULT_NAMESPACE: &str = "default";

/// Why `gracegate mutate` could not produce its output.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The input or policy file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file (`-` for standard input).
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The input is not valid YAML.
    #[error("{path}: {source}")]
    Yaml {
        /// The file (`-` for standard input).
        path: PathBuf,
        /// Where and what.
        #[source]
        source: YamlError,
    },
    /// A GracePolicy (in the input or the policy file) is invalid.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// A pod cannot be worked on.
    #[error("document {document} ({object}): {source}")]
    Engine {
        /// 1-based position of the document.
        document: usize,
        /// `Kind namespace/name`.
        object: String,
        /// What is wrong with it.
        #[source]
        source: EngineError,
    },
}

/// What happened to one document.
#[derive(Debug)]
pub struct Outcome {
    /// Where it is in the input, and its value.
    pub document: Document,
    /// Set for Pods and workloads with a pod template.
    pub workload: Option<Workload>,
}

/// A Pod or a workload with a pod template, and what gracegate did to it.
#[derive(Debug)]
pub struct Workload {
    /// `Deployment`, `Pod`, `CronJob`, ...
    pub kind: String,
    /// Its namespace (`default` when the manifest names none).
    pub namespace: String,
    /// Its name (or `generateName`).
    pub name: String,
    /// What the engine said; `None` when the namespace is not opted in.
    pub mutation: Option<Mutation>,
    /// The JSON Patch of the whole object.
    pub patch: Patch,
    /// The object with the patch applied.
    pub mutated: Value,
}

impl Workload {
    /// `Deployment default/frontend`.
    pub fn title(&self) -> String {
        format!("{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// Where the pod template of each kind of workload lives.
fn template_path(kind: &str) -> Option<&'static [&'static str]> {
    match kind {
        "Pod" => Some(&[]),
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => {
            Some(&["spec", "template"])
        }
        "CronJob" => Some(&["spec", "jobTemplate", "spec", "template"]),
        _ => None,
    }
}

fn text_at<'a>(value: &'a Value, pointer: &str) -> Option<&'a str> {
    value.pointer(pointer).and_then(Value::as_str)
}

/// Runs the engine over every document of `text`. `policies` come from `--policy-file`.
pub fn process(
    text: &str,
    source: &Path,
    policies: Vec<GracePolicy>,
    prestop_style: PreStopStyle,
) -> Result<Vec<Outcome>, ManifestError> {
    let documents = yaml::parse_documents(text).map_err(|error| ManifestError::Yaml {
        path: source.to_owned(),
        source: error,
    })?;
    let view = cluster_view(&documents, policies, prestop_style)?;

    let mut outcomes = Vec::with_capacity(documents.len());
    for (position, document) in documents.into_iter().enumerate() {
        let kind = text_at(&document.value, "/kind").unwrap_or_default();
        let workload = match template_path(kind) {
            Some(path) if document.value.is_object() => Some(
                mutate_workload(&document.value, kind, path, &view).map_err(|source| {
                    ManifestError::Engine {
                        document: position + 1,
                        object: format!("{kind} {}", object_name(&document.value)),
                        source,
                    }
                })?,
            ),
            _ => None,
        };
        outcomes.push(Outcome { document, workload });
    }
    Ok(outcomes)
}

fn object_name(object: &Value) -> String {
    text_at(object, "/metadata/name")
        .or_else(|| text_at(object, "/metadata/generateName"))
        .unwrap_or("<unnamed>")
        .to_owned()
}

fn object_namespace(object: &Value) -> &str {
    text_at(object, "/metadata/namespace")
        .filter(|ns| !ns.is_empty())
        .unwrap_or(DEFAULT_NAMESPACE)
}

/// The cluster as the input describes it.
fn cluster_view(
    documents: &[Document],
    mut policies: Vec<GracePolicy>,
    prestop_style: PreStopStyle,
) -> Result<ClusterView, ManifestError> {
    let mut namespaces = Vec::new();
    let mut alb: HashMap<String, AlbObjects> = HashMap::new();
    let mut services = Vec::new();
    let mut bindings = Vec::new();
    for document in documents {
        let object = &document.value;
        let api_version = text_at(object, "/apiVersion").unwrap_or_default();
        match text_at(object, "/kind").unwrap_or_default() {
            "Namespace" => namespaces.extend(NamespaceView::from_object(object)),
            "Service" => services
                .extend(ServiceView::from_object(object).map(|s| (object_namespace(object), s))),
            "TargetGroupBinding" if api_version.starts_with("elbv2.k8s.aws/") => {
                bindings.extend(
                    BindingView::from_object(object).map(|b| (object_namespace(object), b)),
                );
            }
            policy::KIND if api_version == policy::API_VERSION => {
                policies.push(GracePolicy::from_value(object.clone())?)
            }
            _ => {}
        }
    }
    for (namespace, service) in services {
        alb.entry(namespace.to_owned())
            .or_default()
            .services
            .push(service);
    }
    for (namespace, binding) in bindings {
        alb.entry(namespace.to_owned())
            .or_default()
            .bindings
            .push(binding);
    }
    let mut view = ClusterView::new(PolicySet::new(policies)?, prestop_style);
    view.namespaces = namespaces
        .into_iter()
        .map(|ns| (ns.name.clone(), ns))
        .collect();
    view.alb = alb;
    Ok(view)
}

fn mutate_workload(
    object: &Value,
    kind: &str,
    path: &[&str],
    view: &ClusterView,
) -> Result<Workload, EngineError> {
    let namespace = view.namespace(object_namespace(object));
    let mut workload = Workload {
        kind: kind.to_owned(),
        namespace: namespace.name.clone(),
        name: object_name(object),
        mutation: None,
        patch: Patch::default(),
        mutated: object.clone(),
    };
    // The webhook's namespaceSelector: pods of a namespace that did not opt in never reach it.
    if !namespace.opted_in() {
        return Ok(workload);
    }
    let pointer: String = path.iter().map(|step| format!("/{step}")).collect();
    let template = object
        .pointer(&pointer)
        .ok_or_else(|| EngineError::Malformed(format!("no pod template at {pointer}")))?;
    let workload_kind = (kind != "Pod").then_some(kind);
    let mutation = engine::mutate(template, &view.context(&namespace, workload_kind))?;
    workload.patch = patch::prefixed(&mutation.patch, path);
    json_patch::patch(&mut workload.mutated, &workload.patch)
        .map_err(|error| EngineError::Malformed(format!("the patch does not apply: {error}")))?;
    workload.mutation = Some(mutation);
    Ok(workload)
}

/// Renders the outcomes in the chosen format.
pub fn render(text: &str, outcomes: &[Outcome], format: OutputFormat) -> String {
    match format {
        OutputFormat::Yaml => render_yaml(text, outcomes),
        OutputFormat::Patch => render_patches(outcomes),
        OutputFormat::Diff => render_diff(outcomes),
        OutputFormat::Report => render_report(outcomes),
    }
}

fn changed(outcome: &Outcome) -> Option<&Workload> {
    outcome
        .workload
        .as_ref()
        .filter(|workload| !workload.patch.is_empty())
}

fn render_yaml(text: &str, outcomes: &[Outcome]) -> String {
    let mut out = String::with_capacity(text.len() * 2);
    for outcome in outcomes {
        let source = &outcome.document.source;
        match changed(outcome) {
            Some(workload) => {
                out.push_str(&text[source.start..outcome.document.content_start]);
                out.push_str(&yaml::to_string(&workload.mutated));
            }
            None => out.push_str(&text[source.clone()]),
        }
    }
    out
}

fn render_patches(outcomes: &[Outcome]) -> String {
    let patches: Vec<Value> = outcomes
        .iter()
        .filter_map(|outcome| outcome.workload.as_ref())
        .map(|workload| {
            json!({
                "kind": workload.kind,
                "namespace": workload.namespace,
                "name": workload.name,
                "patch": workload.patch,
            })
        })
        .collect();
    let mut out = serde_json::to_string_pretty(&patches).unwrap_or_default();
    out.push('\n');
    out
}

fn render_diff(outcomes: &[Outcome]) -> String {
    let mut out = String::new();
    for workload in outcomes.iter().filter_map(changed) {
        let before = yaml::to_string(
            &outcomes
                .iter()
                .find(|outcome| {
                    outcome
                        .workload
                        .as_ref()
                        .is_some_and(|w| std::ptr::eq(w, workload))
                })
                .map_or(Value::Null, |outcome| outcome.document.value.clone()),
        );
        let after = yaml::to_string(&workload.mutated);
        let name = format!("{}/{}/{}", workload.kind, workload.namespace, workload.name);
        let diff = similar::TextDiff::from_lines(&before, &after);
        let _ = write!(
            out,
            "{}",
            diff.unified_diff()
                .context_radius(3)
                .header(&format!("a/{name}"), &format!("b/{name}"))
        );
    }
    out
}

fn render_report(outcomes: &[Outcome]) -> String {
    let mut rows: Vec<[String; 3]> = Vec::new();
    let mut warnings: Vec<String> = Vec::new();
    for workload in outcomes
        .iter()
        .filter_map(|outcome| outcome.workload.as_ref())
    {
        let title = workload.title();
        let Some(mutation) = &workload.mutation else {
            rows.push([
                title,
                "-".into(),
                format!("skipped: namespace {} has not opted in", workload.namespace),
            ]);
            continue;
        };
        let summary = &mutation.summary;
        let audit = if summary.audit { "(audit) " } else { "" };
        if let Some(reason) = &summary.skipped {
            rows.push([title.clone(), "-".into(), format!("skipped: {reason}")]);
        } else if !summary.changed() {
            rows.push([title.clone(), "-".into(), "no change".into()]);
        }
        for container in &summary.containers {
            let changes: Vec<String> = container
                .changes
                .iter()
                .map(|change| match change {
                    engine::Change::PreStop(seconds) => format!("prestop {seconds}s"),
                    other => other.label().to_owned(),
                })
                .collect();
            rows.push([
                title.clone(),
                container.name.clone(),
                format!("{audit}{}", changes.join(", ")),
            ]);
        }
        if let Some((from, to)) = summary.grace {
            let from =
                from.map_or_else(|| "unset (30s)".to_owned(), |seconds| format!("{seconds}s"));
            rows.push([
                title.clone(),
                "(pod)".into(),
                format!("{audit}grace {from} -> {to}s"),
            ]);
        }
        if !summary.gates.is_empty() {
            rows.push([
                title.clone(),
                "(pod)".into(),
                format!("{audit}gates {}", summary.gates.join(", ")),
            ]);
        }
        warnings.extend(
            mutation
                .warnings
                .iter()
                .map(|warning| format!("{title}: {warning}")),
        );
    }
    let header = [
        "WORKLOAD".to_owned(),
        "CONTAINER".to_owned(),
        "CHANGES".to_owned(),
    ];
    let widths = [0, 1].map(|column| {
        rows.iter()
            .chain([&header])
            .map(|row| row[column].chars().count())
            .max()
            .unwrap_or(0)
    });
    let mut out = String::new();
    for row in [&header].into_iter().chain(&rows) {
        let _ = writeln!(
            out,
            "{:<w0$}  {:<w1$}  {}",
            row[0],
            row[1],
            row[2],
            w0 = widths[0],
            w1 = widths[1]
        );
    }
    if !warnings.is_empty() {
        out.push_str("\nWARNINGS\n");
        for warning in warnings {
            let _ = writeln!(out, "{warning}");
        }
    }
    out
}

fn read_input(path: &Path) -> Result<String, ManifestError> {
    let error = |source| ManifestError::Read {
        path: path.to_owned(),
        source,
    };
    if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).map_err(error)?;
        Ok(text)
    } else {
        std::fs::read_to_string(path).map_err(error)
    }
}

/// Produces the whole output of `gracegate mutate`, or the reason it cannot.
pub fn mutate_to_string(args: &MutateArgs) -> Result<String, ManifestError> {
    let policies = match &args.policy_file {
        Some(path) => GracePolicy::from_yaml_documents(&read_input(path)?)?,
        None => Vec::new(),
    };
    let style = args
        .kubernetes_version
        .map_or(PreStopStyle::NativeSleep, |version| {
            PreStopStyle::for_version(version.major, version.minor)
        });
    let text = read_input(&args.file)?;
    let outcomes = process(&text, &args.file, policies, style)?;
    Ok(render(&text, &outcomes, args.output))
}

/// Runs `gracegate mutate`: the whole output is built before anything is written, so a
/// failure leaves nothing half-written.
pub fn run(args: &MutateArgs) -> anyhow::Result<ExitCode> {
    match mutate_to_string(args) {
        Ok(output) => {
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(output.as_bytes())?;
            stdout.flush()?;
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => {
            eprintln!("gracegate mutate: {error}");
            Ok(ExitCode::from(EXIT_BAD_INPUT))
        }
    }
}
