//! Which model answers a request: the request's own choice, else the traffic
//! split (a stable hash of customer_id into weighted buckets, the same on
//! every instance and across restarts), else the default model.

use super::registry::{ModelSpec, Registry};
use super::LoadedModel;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Errors in the routing config.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RoutingError {
    #[error("model.traffic: `{0}` is not `name` or `name@version`")]
    BadSpec(String),
    #[error("model.traffic: weight of `{0}` must be a finite number > 0")]
    BadWeight(String),
    #[error("model.shadow: `{0}` is not `name` or `name@version`")]
    BadShadow(String),
}

/// The compiled traffic split and shadow list.
#[derive(Debug, Clone, Default)]
pub struct Routing {
    /// Cumulative upper bounds in [0, 1) with their targets.
    split: Vec<(f64, ModelSpec)>,
    pub shadow: Vec<ModelSpec>,
    pub default: Option<String>,
}

/// FNV-1a, 64 bit: a stable hash (std's hasher is not guaranteed stable).
pub fn stable_hash(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The customer's position in [0, 1).
fn position(customer_id: &str) -> f64 {
    (stable_hash(customer_id) % 1_000_000) as f64 / 1_000_000.0
}

impl Routing {
    pub fn new(
        traffic: &BTreeMap<String, f64>,
        shadow: &[String],
        default: Option<String>,
    ) -> Result<Routing, RoutingError> {
        let mut parts = Vec::new();
        for (k, w) in traffic {
            let spec = ModelSpec::parse(k).ok_or_else(|| RoutingError::BadSpec(k.clone()))?;
            if !w.is_finite() || *w <= 0.0 {
                return Err(RoutingError::BadWeight(k.clone()));
            }
            parts.push((*w, spec));
        }
        let total: f64 = parts.iter().map(|(w, _)| w).sum();
        let mut acc = 0.0;
        let split = parts
            .into_iter()
            .map(|(w, s)| {
                acc += w / total;
                (acc, s)
            })
            .collect();
        let shadow = shadow
            .iter()
            .map(|s| ModelSpec::parse(s).ok_or_else(|| RoutingError::BadShadow(s.clone())))
            .collect::<Result<_, _>>()?;
        Ok(Routing {
            split,
            shadow,
            default,
        })
    }

    /// Versions that must be loaded besides each model's serving one.
    pub fn pinned(&self) -> Vec<ModelSpec> {
        self.split
            .iter()
            .map(|(_, s)| s.clone())
            .chain(self.shadow.iter().cloned())
            .filter(|s| s.version.is_some())
            .collect()
    }

    /// The split's target for a customer, if a split is configured.
    pub fn target(&self, customer_id: &str) -> Option<&ModelSpec> {
        if self.split.is_empty() {
            return None;
        }
        let p = position(customer_id);
        self.split
            .iter()
            .find(|(bound, _)| p < *bound)
            .or(self.split.last())
            .map(|(_, s)| s)
    }

    /// The model for a request: explicit choice, split, default.
    pub fn choose(
        &self,
        reg: &Registry,
        requested: Option<&ModelSpec>,
        customer_id: &str,
    ) -> Option<Arc<LoadedModel>> {
        if let Some(spec) = requested {
            return reg.resolve(spec).cloned();
        }
        if let Some(spec) = self.target(customer_id) {
            if let Some(m) = reg.resolve(spec) {
                return Some(m.clone());
            }
        }
        reg.default_model(self.default.as_deref()).cloned()
    }

    /// The share of traffic each spec gets (for `GET /v1/models`).
    pub fn shares(&self) -> Vec<(ModelSpec, f64)> {
        let mut prev = 0.0;
        self.split
            .iter()
            .map(|(b, s)| {
                let share = b - prev;
                prev = *b;
                (s.clone(), share)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_proportions_follow_weights_and_are_stable() {
        let mut traffic = BTreeMap::new();
        traffic.insert("a".to_string(), 90.0);
        traffic.insert("b@2".to_string(), 10.0);
        let r = Routing::new(&traffic, &[], None).expect("valid");
        let n = 20_000;
        let b = (0..n)
            .filter(|i| {
                r.target(&format!("customer-{i}"))
                    .is_some_and(|s| s.name == "b")
            })
            .count();
        let share = b as f64 / n as f64;
        assert!((share - 0.10).abs() < 0.01, "b got {share}");
        // the same customer always lands on the same side
        for i in 0..100 {
            let c = format!("c{i}");
            assert_eq!(r.target(&c), r.target(&c));
        }
        assert_eq!(
            r.pinned(),
            vec![ModelSpec {
                name: "b".into(),
                version: Some(2)
            }]
        );
        assert_eq!(stable_hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stable_hash("a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn bad_config_is_named() {
        let mut t = BTreeMap::new();
        t.insert("a@x".to_string(), 1.0);
        assert_eq!(
            Routing::new(&t, &[], None).unwrap_err(),
            RoutingError::BadSpec("a@x".into())
        );
        let mut t = BTreeMap::new();
        t.insert("a".to_string(), -1.0);
        assert_eq!(
            Routing::new(&t, &[], None).unwrap_err(),
            RoutingError::BadWeight("a".into())
        );
    }
}
