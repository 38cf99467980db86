//! The catalog topics as the consumer and the producer see them:
//! `catalog.items` and `catalog.customers`, message key = the item or
//! customer id, value = a JSON object of its static fields, converted by
//! `features::catalog` exactly as `PUT /v1/items/{id}` and the backfill
//! convert theirs. A message that does not convert is dead-lettered with
//! the reason, like a bad event.

use super::kafka::{CATALOG_CUSTOMERS_TOPIC, CATALOG_ITEMS_TOPIC};
use crate::features::catalog::{CatalogError, StaticColumns};
use crate::features::store::GroupWrite;
use crate::features::{Entity, FeatureSet};

/// The static columns of items and customers, keyed by their topic.
#[derive(Debug, Clone)]
pub struct CatalogTopics {
    items: StaticColumns,
    customers: StaticColumns,
}

impl CatalogTopics {
    pub fn new(set: &FeatureSet) -> CatalogTopics {
        CatalogTopics {
            items: StaticColumns::of(set, Entity::Item),
            customers: StaticColumns::of(set, Entity::Customer),
        }
    }

    /// The topic carrying `entity`'s updates.
    pub fn topic(entity: Entity) -> &'static str {
        match entity {
            Entity::Item => CATALOG_ITEMS_TOPIC,
            _ => CATALOG_CUSTOMERS_TOPIC,
        }
    }

    /// The columns of a catalog topic; `None` for any other topic.
    pub fn columns(&self, topic: &str) -> Option<&StaticColumns> {
        match topic {
            CATALOG_ITEMS_TOPIC => Some(&self.items),
            CATALOG_CUSTOMERS_TOPIC => Some(&self.customers),
            _ => None,
        }
    }
}

/// A catalog message → the write it asks for: the key is the id (it must
/// be UTF-8 and a valid id), the value a partial update.
pub fn decode(
    cols: &StaticColumns,
    key: Option<&[u8]>,
    payload: &[u8],
) -> Result<GroupWrite, CatalogError> {
    let id = match key.map(std::str::from_utf8) {
        Some(Ok(id)) => id,
        Some(Err(_)) => {
            return Err(CatalogError::Field {
                column: cols.id_column().into(),
                problem: "(the message key) is not UTF-8".into(),
            })
        }
        None => {
            return Err(CatalogError::Field {
                column: cols.id_column().into(),
                problem: "(the message key) is missing".into(),
            })
        }
    };
    cols.parse_update(id, payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::store::Group;

    fn topics() -> CatalogTopics {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/feature-store/features.toml");
        CatalogTopics::new(&FeatureSet::load(std::path::Path::new(path)).expect("features"))
    }

    #[test]
    fn the_key_is_the_id_and_bad_keys_are_named() {
        let t = topics();
        let items = t.columns("catalog.items").expect("a catalog topic");
        let w = decode(items, Some(b"p7"), br#"{"in_stock": 0}"#).expect("valid");
        assert_eq!(w.group, Group::Item("p7".into()));
        let c = t.columns("catalog.customers").expect("a catalog topic");
        let w = decode(c, Some(b"c1"), br#"{"segment": "vip"}"#).expect("valid");
        assert_eq!(w.group, Group::Customer("c1".into()));
        assert!(t.columns("events.click").is_none());
        for key in [None, Some(&b"\xff\xfe"[..]), Some(&b""[..])] {
            let e = decode(items, key, br#"{"in_stock": 0}"#).expect_err("bad key");
            assert_eq!(e.column(), Some("item_id"), "{key:?} → {e}");
        }
    }
}
