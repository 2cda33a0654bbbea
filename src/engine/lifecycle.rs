//! The preStop sleep, and the grace period that must cover it plus the app's drain.

use serde_json::{Value, json};

use super::{Change, EngineError, PreStopStyle, Target};
use crate::patch::{PatchBuilder, Step};

/// The grace period Kubernetes uses when a pod sets none.
const DEFAULT_GRACE_SECONDS: i64 = 30;

/// Adds a preStop sleep where the container has no preStop. Returns the container's sleep
/// as it will stand: the injected seconds, its own hook's sleep when readable, else 0.
pub(crate) fn inject_prestop(
    target: &Target<'_>,
    seconds: i64,
    style: PreStopStyle,
    builder: &mut PatchBuilder<'_>,
    changes: &mut Vec<Change>,
) -> Result<i64, EngineError> {
    if let Some(own) = target
        .container
        .pointer("/lifecycle/preStop")
        .filter(|hook| !hook.is_null())
    {
        return Ok(own_sleep_seconds(own).unwrap_or(0));
    }
    // A zero sleep is no sleep; and the API refuses `sleep: {seconds: 0}` before 1.32.
    if seconds == 0 {
        return Ok(0);
    }
    let hook = match style {
        PreStopStyle::NativeSleep => json!({ "sleep": { "seconds": seconds } }),
        PreStopStyle::Exec => json!({ "exec": { "command": ["sleep", seconds.to_string()] } }),
    };
    let [spec, list, index, _] = target.path("");
    builder.set(
        &[
            spec,
            list,
            index,
            Step::Key("lifecycle"),
            Step::Key("preStop"),
        ],
        hook,
    )?;
    changes.push(Change::PreStop(seconds));
    Ok(seconds)
}

/// The seconds a preStop hook sleeps, when it is a sleep gracegate can read: the native
/// `sleep` handler, `exec` of `sleep N`, or `exec` of a shell running `sleep N`.
pub fn own_sleep_seconds(hook: &Value) -> Option<i64> {
    if let Some(seconds) = hook.pointer("/sleep/seconds") {
        return seconds.as_i64();
    }
    let command: Vec<&str> = hook
        .pointer("/exec/command")?
        .as_array()?
        .iter()
        .map(Value::as_str)
        .collect::<Option<_>>()?;
    let is = |word: &str, names: &[&str]| {
        names
            .iter()
            .any(|name| word == *name || word.ends_with(&format!("/{name}")))
    };
    match command.as_slice() {
        [sleep, duration] if is(sleep, &["sleep"]) => seconds_of(duration),
        [shell, "-c", script] if is(shell, &["sh", "bash", "ash", "dash"]) => {
            let duration = script
                .trim()
                .trim_end_matches(';')
                .trim()
                .strip_prefix("sleep ")?;
            seconds_of(duration.trim())
        }
        _ => None,
    }
}

/// `10` or `10s`, as `sleep` reads them.
fn seconds_of(text: &str) -> Option<i64> {
    text.strip_suffix('s')
        .unwrap_or(text)
        .parse::<i64>()
        .ok()
        .filter(|seconds| *seconds >= 0)
}

/// Raises `terminationGracePeriodSeconds` to `needed` when it is lower (an unset grace
/// period counts as the API's 30). Returns the change, if any.
pub(crate) fn raise_grace(
    spec: &Value,
    needed: i64,
    builder: &mut PatchBuilder<'_>,
) -> Result<Option<(Option<i64>, i64)>, EngineError> {
    let current = match spec.get("terminationGracePeriodSeconds") {
        None | Some(Value::Null) => None,
        Some(value) => Some(value.as_i64().ok_or_else(|| {
            EngineError::Malformed(
                "spec.terminationGracePeriodSeconds is not a whole number".to_owned(),
            )
        })?),
    };
    if needed <= current.unwrap_or(DEFAULT_GRACE_SECONDS) {
        return Ok(None);
    }
    builder.set(
        &["spec".into(), "terminationGracePeriodSeconds".into()],
        json!(needed),
    )?;
    Ok(Some((current, needed)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readable_sleeps() {
        let table = [
            (json!({"sleep": {"seconds": 15}}), Some(15)),
            (json!({"exec": {"command": ["sleep", "5"]}}), Some(5)),
            (json!({"exec": {"command": ["/bin/sleep", "7s"]}}), Some(7)),
            (
                json!({"exec": {"command": ["sh", "-c", "sleep 20"]}}),
                Some(20),
            ),
            (
                json!({"exec": {"command": ["/bin/sh", "-c", " sleep 3; "]}}),
                Some(3),
            ),
            (
                json!({"exec": {"command": ["/bin/bash", "-c", "sleep 3 && kill 1"]}}),
                None,
            ),
            (json!({"exec": {"command": ["/wait-shutdown"]}}), None),
            (json!({"exec": {"command": ["nodetool", "drain"]}}), None),
            (
                json!({"httpGet": {"path": "/shutdown", "port": 8090}}),
                None,
            ),
            (json!({"exec": {"command": ["sleep", "-1"]}}), None),
            (json!({"exec": {"command": ["sleep", "infinity"]}}), None),
        ];
        for (hook, expected) in table {
            assert_eq!(own_sleep_seconds(&hook), expected, "{hook}");
        }
    }
}
