//! `SPILLWAY_*` environment variables over the file's settings: `SPILLWAY_<SECTION>_<KEY>`
//! for every scalar or list setting, plus the short forms of the common ones. A value is
//! converted to the type of the setting it replaces, and a value the setting refuses is
//! reported under the variable's name.

use super::{Config, ConfigError};

/// The short variables and the settings they set.
const SHORT: [(&str, (&str, &str)); 6] = [
    ("SPILLWAY_MODEL", ("model", "path")),
    ("SPILLWAY_BROKER", ("mqtt", "broker")),
    ("SPILLWAY_DEVICE", ("mqtt", "device")),
    ("SPILLWAY_THREADS", ("engine", "threads")),
    ("SPILLWAY_RAM_BUDGET", ("engine", "ram_budget")),
    ("SPILLWAY_QUEUE", ("service", "queue")),
];

/// Applies the `SPILLWAY_*` variables of `env` to `config`. Unrecognised `SPILLWAY_*`
/// names are left alone (other parts of Spillway read some, e.g. `SPILLWAY_KERNELS`).
pub(super) fn apply_env(
    config: &mut Config,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    let env_error = |var: &str, message: String| ConfigError::Env {
        var: var.to_string(),
        message,
    };
    let mut table = toml::Table::try_from(&*config)
        .map_err(|e| env_error("SPILLWAY_*", format!("the settings do not serialize: {e}")))?;
    let mut changed = false;
    for (var, value) in env {
        let Some(rest) = var.strip_prefix("SPILLWAY_") else {
            continue;
        };
        let target = SHORT
            .iter()
            .find(|(n, _)| *n == var)
            .map(|(_, (s, k))| (s.to_string(), k.to_string()))
            .or_else(|| {
                let lower = rest.to_ascii_lowercase();
                let (section, key) = lower.split_once('_')?;
                let known = table.get(section)?.as_table()?.contains_key(key);
                known.then(|| (section.to_string(), key.to_string()))
            });
        let Some((section, key)) = target else {
            continue;
        };
        let Some(slot) = table
            .get_mut(&section)
            .and_then(|s| s.as_table_mut())
            .and_then(|s| s.get_mut(&key))
        else {
            continue;
        };
        *slot = env_value(slot, &value).map_err(|m| env_error(&var, m))?;
        // Convert now, so a value the setting refuses is blamed on this variable.
        Config::deserialize_table(table.clone()).map_err(|e| env_error(&var, e))?;
        changed = true;
    }
    if changed {
        let source = config.source.take();
        *config = Config::deserialize_table(table).map_err(|e| env_error("SPILLWAY_*", e))?;
        config.source = source;
    }
    Ok(())
}

impl Config {
    fn deserialize_table(table: toml::Table) -> Result<Config, String> {
        table
            .try_into()
            .map_err(|e: toml::de::Error| e.message().trim().to_string())
    }
}

/// Converts an environment value to the type of the setting it replaces. Lists are
/// comma-separated; their items are numbers where they read as numbers, else strings.
fn env_value(current: &toml::Value, raw: &str) -> Result<toml::Value, String> {
    Ok(match current {
        toml::Value::String(_) => toml::Value::String(raw.to_string()),
        toml::Value::Integer(_) => toml::Value::Integer(
            raw.trim()
                .parse()
                .map_err(|_| format!("{raw:?} is not an integer"))?,
        ),
        toml::Value::Float(_) => {
            let v: f64 = raw
                .trim()
                .parse()
                .map_err(|_| format!("{raw:?} is not a number"))?;
            toml::Value::Float(v)
        }
        toml::Value::Boolean(_) => match raw.trim() {
            "1" | "true" | "yes" | "on" => toml::Value::Boolean(true),
            "0" | "false" | "no" | "off" => toml::Value::Boolean(false),
            _ => return Err(format!("{raw:?} is not a boolean (true/false)")),
        },
        toml::Value::Array(_) => toml::Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| match s.parse::<i64>() {
                    Ok(n) => toml::Value::Integer(n),
                    Err(_) => toml::Value::String(s.to_string()),
                })
                .collect(),
        ),
        _ => return Err("this setting cannot be set from the environment".into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CloudRouteName;
    use crate::config::tests::env;

    #[test]
    fn every_kind_of_setting_can_be_set() {
        let mut c = Config::default();
        apply_env(
            &mut c,
            env(&[
                ("SPILLWAY_ENGINE_CPUS", "4, 5,6"),
                ("SPILLWAY_ROUTER_CLOUD_ROUTES", "mqtt,https"),
                ("SPILLWAY_ROUTER_RATE_PRIOR", "7.5"),
                ("SPILLWAY_MODEL_MLOCK", "yes"),
                ("SPILLWAY_RAM_BUDGET", "2GiB"),
                ("SPILLWAY_SERVICE_ROLE", "worker"),
            ]),
        )
        .unwrap();
        assert_eq!(c.engine.cpus, [4, 5, 6]);
        assert_eq!(
            c.router.cloud_routes,
            [CloudRouteName::Mqtt, CloudRouteName::Https]
        );
        assert_eq!(c.router.rate_prior, 7.5);
        assert!(c.model.mlock);
        assert_eq!(c.engine.ram_budget.to_string(), "2GiB");
        assert_eq!(c.service.role, crate::config::Role::Worker);
    }

    #[test]
    fn a_refused_value_names_its_variable() {
        for (var, value, needle) in [
            ("SPILLWAY_THREADS", "many", "integer"),
            ("SPILLWAY_ENGINE_KV_TYPE", "q4", "q4"),
            ("SPILLWAY_RAM_BUDGET", "lots", "lots"),
            ("SPILLWAY_ROUTER_CLOUD_ROUTES", "ftp", "ftp"),
            ("SPILLWAY_ENGINE_CPUS", "a,b", "a"),
        ] {
            let mut c = Config::default();
            let e = apply_env(&mut c, env(&[(var, value)]))
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with(&format!("environment variable {var}:")),
                "{e}"
            );
            assert!(e.contains(needle), "{e}");
        }
    }
}
