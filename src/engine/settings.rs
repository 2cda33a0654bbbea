//! The effective settings for one pod: pod annotation > namespace annotation > policy.
//! A value that does not parse is a warning, and the next level down is used.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{Context, PreStopStyle, Warnings};
use crate::policy::{self, PolicySpec, PreStopAction, ProbePort};

pub(crate) const INJECT: &str = "gracegate.io/inject";
const PRESTOP_SECONDS: &str = "gracegate.io/prestop-seconds";
const SHUTDOWN_SECONDS: &str = "gracegate.io/shutdown-seconds";
const PROBE_PATH: &str = "gracegate.io/probe-path";
const PROBE_PORT: &str = "gracegate.io/probe-port";
const PROBES: &str = "gracegate.io/probes";
const CONTAINERS: &str = "gracegate.io/containers";

/// Which probes to inject, by kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ProbeKinds {
    pub readiness: bool,
    pub startup: bool,
    pub liveness: bool,
}

/// The settings for one pod.
#[derive(Debug)]
pub(crate) struct Settings<'a> {
    /// From an annotation; overrides both the policy and the ALB preStop.
    prestop_override: Option<i64>,
    pub shutdown_seconds: i64,
    /// From an annotation; overrides every probe's policy path.
    pub probe_path: Option<&'a str>,
    pub probe_port: ProbePort,
    pub probes: ProbeKinds,
    /// Only these containers, when given.
    pub containers: Option<Vec<&'a str>>,
}

impl Settings<'_> {
    /// The preStop sleep to inject: the annotation's, else the ALB's (the longer of it and the
    /// policy's) for a pod behind an ALB, else the policy's. Zero when preStop is disabled.
    pub fn prestop_seconds(&self, behind_alb: bool, policy: &PolicySpec) -> i64 {
        if let Some(seconds) = self.prestop_override {
            return seconds;
        }
        if !policy.pre_stop.enabled {
            return 0;
        }
        if behind_alb {
            policy
                .readiness_gates
                .alb
                .pre_stop_seconds
                .max(policy.pre_stop.seconds)
        } else {
            policy.pre_stop.seconds
        }
    }

    /// The preStop handler to inject.
    pub fn prestop_action(&self, policy: &PolicySpec, cluster: PreStopStyle) -> PreStopStyle {
        match policy.pre_stop.action {
            PreStopAction::Auto => cluster,
            PreStopAction::Sleep => PreStopStyle::NativeSleep,
            PreStopAction::Exec => PreStopStyle::Exec,
        }
    }
}

/// Reads the overrides of a pod with these annotations.
pub(crate) fn resolve<'a>(
    pod_annotations: Option<&'a Value>,
    context: &Context<'a>,
    warnings: &mut Warnings,
) -> Settings<'a> {
    let policy = &context.policy.spec;
    let lookup = Lookup {
        pod: pod_annotations,
        namespace: &context.namespace.annotations,
    };

    let prestop_override = lookup.parse(PRESTOP_SECONDS, warnings, |text| {
        seconds(text, policy::MAX_PRESTOP_SECONDS)
    });
    let shutdown_seconds = lookup
        .parse(SHUTDOWN_SECONDS, warnings, |text| {
            seconds(text, policy::MAX_SHUTDOWN_SECONDS)
        })
        .unwrap_or(policy.shutdown.seconds);
    let probe_path = lookup.parse(PROBE_PATH, warnings, |text| {
        if text.starts_with('/') && !text.contains(char::is_whitespace) {
            Ok(text)
        } else {
            Err("is not a path starting with /")
        }
    });
    let probe_port = lookup
        .parse(PROBE_PORT, warnings, |text| {
            ProbePort::parse(text)
                .map_err(|_| "is not Auto, a port number (1-65535) or a port name")
        })
        .unwrap_or_else(|| policy.probes.port.clone());
    let probes = lookup
        .parse(PROBES, warnings, probe_kinds)
        .unwrap_or(ProbeKinds {
            readiness: policy.probes.readiness.enabled,
            startup: policy.probes.startup.enabled,
            liveness: policy.probes.liveness.enabled,
        });
    let containers = lookup.parse(CONTAINERS, warnings, |text| {
        let names: Vec<&str> = text
            .split(',')
            .map(str::trim)
            .filter(|name| !name.is_empty())
            .collect();
        if names.is_empty() {
            Err("names no container")
        } else {
            Ok(names)
        }
    });
    Settings {
        prestop_override,
        shutdown_seconds,
        probe_path,
        probe_port,
        probes,
        containers,
    }
}

/// Annotations of the pod, then of its namespace.
struct Lookup<'a> {
    pod: Option<&'a Value>,
    namespace: &'a BTreeMap<String, String>,
}

impl<'a> Lookup<'a> {
    /// The first value of `key` that `parse` accepts, pod before namespace; each refused
    /// value is a warning.
    fn parse<T>(
        &self,
        key: &str,
        warnings: &mut Warnings,
        parse: impl Fn(&'a str) -> Result<T, &'static str>,
    ) -> Option<T> {
        let from_pod = self
            .pod
            .and_then(|annotations| annotations.get(key))
            .and_then(Value::as_str);
        let from_namespace = self.namespace.get(key).map(String::as_str);
        for (origin, text) in [("pod", from_pod), ("namespace", from_namespace)] {
            let Some(text) = text else { continue };
            match parse(text) {
                Ok(value) => return Some(value),
                Err(reason) => warnings.push_fmt(format_args!(
                    "{origin} annotation {key}={text:?} {reason}; ignored"
                )),
            }
        }
        None
    }
}

fn seconds(text: &str, max: i64) -> Result<i64, &'static str> {
    match text.trim().parse::<i64>() {
        Ok(value) if (0..=max).contains(&value) => Ok(value),
        Ok(_) => Err("is out of range"),
        Err(_) => Err("is not a whole number of seconds"),
    }
}

fn probe_kinds(text: &str) -> Result<ProbeKinds, &'static str> {
    let mut kinds = ProbeKinds {
        readiness: false,
        startup: false,
        liveness: false,
    };
    if text.trim() == "none" {
        return Ok(kinds);
    }
    for word in text.split(',').map(str::trim) {
        match word {
            "readiness" => kinds.readiness = true,
            "startup" => kinds.startup = true,
            "liveness" => kinds.liveness = true,
            _ => return Err("is not a list of readiness, startup, liveness, or none"),
        }
    }
    Ok(kinds)
}

/// Whether an `inject` annotation or label value opts the pod out.
pub(crate) fn opted_out(value: Option<&str>) -> bool {
    value == Some("disabled")
}
