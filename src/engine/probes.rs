//! Readiness, startup and liveness probes, injected where a container has none of the kind.
//! `Auto` means `httpGet` only when a path is configured (never guess a path), else
//! `tcpSocket`, on the configured port or the container's first TCP port (preferring `http`).

use serde_json::{Map, Value, json};

use super::settings::Settings;
use super::{Change, EngineError, Target, Warnings};
use crate::patch::PatchBuilder;
use crate::policy::{PolicySpec, ProbeHandler, ProbePort, ProbeSpec};

/// The three kinds, in patch order: the field, the change, and whether the kind needs
/// `successThreshold: 1` (the API refuses any other value for liveness and startup).
const KINDS: [(&str, Change, bool); 3] = [
    ("readinessProbe", Change::Readiness, false),
    ("startupProbe", Change::Startup, true),
    ("livenessProbe", Change::Liveness, true),
];

/// Adds the missing probes of one container.
pub(crate) fn inject(
    target: &Target<'_>,
    settings: &Settings<'_>,
    policy: &PolicySpec,
    builder: &mut PatchBuilder<'_>,
    changes: &mut Vec<Change>,
    warnings: &mut Warnings,
) -> Result<(), EngineError> {
    let wanted = [
        settings.probes.readiness,
        settings.probes.startup,
        settings.probes.liveness,
    ];
    let specs = [
        &policy.probes.readiness,
        &policy.probes.startup,
        &policy.probes.liveness,
    ];
    let missing: Vec<usize> = (0..KINDS.len())
        .filter(|&kind| {
            wanted[kind]
                && target
                    .container
                    .get(KINDS[kind].0)
                    .is_none_or(Value::is_null)
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let port = match probe_port(target, &settings.probe_port) {
        Ok(port) => port,
        Err(reason) => {
            warnings.push_fmt(format_args!(
                "container {:?}: {reason}; no probe injected",
                target.name
            ));
            return Ok(());
        }
    };
    for kind in missing {
        let (field, change, single_success) = KINDS[kind];
        let probe = build(specs[kind], settings.probe_path, &port, single_success);
        builder.set(&target.path(field), probe)?;
        changes.push(change);
    }
    Ok(())
}

/// The probe's port as it will be written: a number or a name of the container's.
fn probe_port(target: &Target<'_>, configured: &ProbePort) -> Result<Value, String> {
    let ports: &[Value] = target
        .container
        .get("ports")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice);
    let is_tcp = |port: &&Value| {
        port.get("protocol")
            .and_then(Value::as_str)
            .is_none_or(|p| p == "TCP")
    };
    let name_of = |port: &Value| port.get("name").and_then(Value::as_str).map(str::to_owned);
    match configured {
        ProbePort::Number(number) => Ok(json!(number)),
        ProbePort::Name(name) => {
            if ports
                .iter()
                .filter(is_tcp)
                .any(|port| name_of(port).as_deref() == Some(name.as_str()))
            {
                Ok(json!(name))
            } else {
                Err(format!("port {name:?} is not a TCP containerPort name"))
            }
        }
        ProbePort::Auto => {
            let tcp: Vec<&Value> = ports.iter().filter(is_tcp).collect();
            let chosen = tcp
                .iter()
                .find(|port| name_of(port).as_deref() == Some("http"))
                .or_else(|| tcp.first())
                .and_then(|port| port.get("containerPort"))
                .and_then(Value::as_i64)
                .filter(|number| (1..=65535).contains(number));
            match chosen {
                Some(number) => Ok(json!(number)),
                None if ports.is_empty() => Err("no containerPort to probe".to_owned()),
                None => Err("no TCP containerPort to probe".to_owned()),
            }
        }
    }
}

fn build(
    spec: &ProbeSpec,
    annotation_path: Option<&str>,
    port: &Value,
    single_success: bool,
) -> Value {
    let path = annotation_path.unwrap_or(&spec.path);
    let http = match spec.handler {
        ProbeHandler::Auto => !path.is_empty(),
        ProbeHandler::HttpGet => true,
        ProbeHandler::TcpSocket => false,
    };
    let mut probe = Map::new();
    if http {
        probe.insert("httpGet".to_owned(), json!({ "path": path, "port": port }));
    } else {
        probe.insert("tcpSocket".to_owned(), json!({ "port": port }));
    }
    probe.insert("periodSeconds".to_owned(), json!(spec.period_seconds));
    probe.insert("timeoutSeconds".to_owned(), json!(spec.timeout_seconds));
    if single_success {
        probe.insert("successThreshold".to_owned(), json!(1));
    }
    probe.insert("failureThreshold".to_owned(), json!(spec.failure_threshold));
    Value::Object(probe)
}
