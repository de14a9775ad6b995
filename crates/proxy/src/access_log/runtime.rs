//! The runtime values access log filters read (`runtime_key` of comparisons and of
//! `runtime_filter`): the bootstrap's `layered_runtime` static layers, flattened to dotted keys,
//! the last layer winning. Swapped whole; read lock-free.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use sluice_config::access_log::{DenominatorType, FractionalPercent};
use sluice_config::Bootstrap;

type Values = HashMap<String, serde_json::Value>;

fn store() -> &'static ArcSwap<Values> {
    static S: OnceLock<ArcSwap<Values>> = OnceLock::new();
    S.get_or_init(|| ArcSwap::from_pointee(HashMap::new()))
}

/// Load the static layers of a bootstrap (called when a configuration is applied).
pub fn set_from_bootstrap(bootstrap: &Bootstrap) {
    let mut values = HashMap::new();
    for (_, layer) in crate::bootstrap::settings(bootstrap).runtime_layers {
        if let Some(v) = layer {
            flatten("", v, &mut values);
        }
    }
    store().store(Arc::new(values));
}

fn flatten(prefix: &str, v: &serde_json::Value, out: &mut Values) {
    match v {
        serde_json::Value::Object(map) if !is_fractional_percent(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                flatten(&key, v, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.clone());
        }
    }
}

fn is_fractional_percent(map: &serde_json::Map<String, serde_json::Value>) -> bool {
    map.contains_key("numerator") && map.keys().all(|k| k == "numerator" || k == "denominator")
}

fn get(key: &str) -> Option<serde_json::Value> {
    let s = store().load();
    if s.is_empty() {
        return None;
    }
    s.get(key).cloned()
}

/// An integer runtime value.
pub fn u32(key: &str) -> Option<u32> {
    match get(key)? {
        serde_json::Value::Number(n) => n.as_u64().and_then(|v| u32::try_from(v).ok()),
        serde_json::Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// A percentage: `{numerator, denominator}`, or a number (percent of a hundred).
pub fn fractional_percent(key: &str) -> Option<FractionalPercent> {
    match get(key)? {
        serde_json::Value::Object(map) => {
            let numerator = map.get("numerator")?.as_u64().and_then(|v| u32::try_from(v).ok())?;
            let denominator = match map.get("denominator").and_then(|d| d.as_str()) {
                None | Some("HUNDRED") => DenominatorType::Hundred,
                Some("TEN_THOUSAND") => DenominatorType::TenThousand,
                Some("MILLION") => DenominatorType::Million,
                Some(_) => return None,
            };
            Some(FractionalPercent { numerator, denominator })
        }
        serde_json::Value::Number(n) => {
            let numerator = n.as_u64().and_then(|v| u32::try_from(v).ok())?;
            Some(FractionalPercent { numerator, denominator: DenominatorType::Hundred })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_layers_flatten_and_the_last_wins() {
        let b: Bootstrap = serde_json::from_value(serde_json::json!({
            "layered_runtime": {"layers": [
                {"name": "a", "static_layer": {"access_log": {"min": 400, "pct": {"numerator": 5, "denominator": "TEN_THOUSAND"}}}},
                {"name": "b", "static_layer": {"access_log.min": 500, "sample": 25}}
            ]}
        }))
        .unwrap();
        set_from_bootstrap(&b);
        assert_eq!(u32("access_log.min"), Some(500));
        assert_eq!(fractional_percent("access_log.pct"), Some(FractionalPercent { numerator: 5, denominator: DenominatorType::TenThousand }));
        assert_eq!(fractional_percent("sample"), Some(FractionalPercent { numerator: 25, denominator: DenominatorType::Hundred }));
        assert_eq!(u32("nope"), None);
        set_from_bootstrap(&Bootstrap::default());
        assert_eq!(u32("access_log.min"), None);
    }
}
