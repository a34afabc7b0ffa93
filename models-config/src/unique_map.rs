//! A string-keyed map that refuses duplicate keys when it is deserialized.
//!
//! JSON allows an object to repeat a key, and serde's maps keep the last value silently. In a
//! rule set that would hide a mistake (two clusters with one name, one of them ignored), so
//! every name-keyed part of [`RuleSet`](crate::spec::RuleSet) uses [`UniqueMap`], and the
//! plain `BTreeMap` fields of the spec (splits, cells, attributes, metadata) are read through
//! the same visitor.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::collections::btree_map;
use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};
use serde::{Serialize, Serializer};

/// A map from names to `V`, ordered by name, whose JSON form is a plain object.
///
/// Deserializing fails with `duplicate key "NAME"` when the object repeats a key. Everything
/// else behaves like the inner [`BTreeMap`], which it dereferences to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UniqueMap<V>(pub BTreeMap<String, V>);

// === impl UniqueMap ===

impl<V> UniqueMap<V> {
    /// An empty map.
    pub fn new() -> Self {
        Self(BTreeMap::new())
    }

    /// Consumes the wrapper and returns the inner map.
    pub fn into_inner(self) -> BTreeMap<String, V> {
        self.0
    }
}

// Written by hand: the derive would require `V: Default`.
impl<V> Default for UniqueMap<V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<V> Deref for UniqueMap<V> {
    type Target = BTreeMap<String, V>;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl<V> DerefMut for UniqueMap<V> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl<V> From<BTreeMap<String, V>> for UniqueMap<V> {
    fn from(map: BTreeMap<String, V>) -> Self {
        Self(map)
    }
}

impl<V> FromIterator<(String, V)> for UniqueMap<V> {
    /// Collects pairs into a map; a repeated key keeps the last value, as `BTreeMap` does.
    fn from_iter<I: IntoIterator<Item = (String, V)>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

impl<'a, V> IntoIterator for &'a UniqueMap<V> {
    type Item = (&'a String, &'a V);
    type IntoIter = btree_map::Iter<'a, String, V>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl<V> IntoIterator for UniqueMap<V> {
    type Item = (String, V);
    type IntoIter = btree_map::IntoIter<String, V>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<V: Serialize> Serialize for UniqueMap<V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(&self.0)
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for UniqueMap<V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_map(UniqueMapVisitor(PhantomData))
            .map(Self)
    }
}

impl<V: JsonSchema> JsonSchema for UniqueMap<V> {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        format!("UniqueMap_of_{}", V::schema_name()).into()
    }

    fn schema_id() -> Cow<'static, str> {
        format!("models_config::UniqueMap<{}>", V::schema_id()).into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "object",
            "additionalProperties": generator.subschema_for::<V>(),
        })
    }
}

/// Reads a JSON object into a `BTreeMap`, rejecting duplicate keys with an error naming the
/// key.
struct UniqueMapVisitor<V>(PhantomData<fn() -> V>);

impl<'de, V: Deserialize<'de>> Visitor<'de> for UniqueMapVisitor<V> {
    type Value = BTreeMap<String, V>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object with unique keys")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
        let mut map = BTreeMap::new();
        while let Some(key) = access.next_key::<String>()? {
            if map.contains_key(&key) {
                return Err(de::Error::custom(format_args!("duplicate key {key:?}")));
            }
            let value = access.next_value()?;
            map.insert(key, value);
        }
        Ok(map)
    }
}

/// `deserialize_with` for a `BTreeMap<String, V>` field of the spec: the same duplicate-key
/// check as [`UniqueMap`], while the field keeps its plain map type.
pub(crate) fn unique_btree<'de, D, V>(deserializer: D) -> Result<BTreeMap<String, V>, D::Error>
where
    D: Deserializer<'de>,
    V: Deserialize<'de>,
{
    deserializer.deserialize_map(UniqueMapVisitor(PhantomData))
}

/// `deserialize_with` for an `Option<BTreeMap<String, V>>` field of the spec (`null` reads as
/// `None`).
pub(crate) fn unique_btree_opt<'de, D, V>(
    deserializer: D,
) -> Result<Option<BTreeMap<String, V>>, D::Error>
where
    D: Deserializer<'de>,
    V: Deserialize<'de>,
{
    Ok(Option::<UniqueMap<V>>::deserialize(deserializer)?.map(UniqueMap::into_inner))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_key_is_rejected_with_its_name() {
        let err = serde_json::from_str::<UniqueMap<u32>>(r#"{"a": 1, "b": 2, "a": 3}"#)
            .expect_err("duplicate key must be rejected");
        assert!(
            err.to_string().starts_with(r#"duplicate key "a""#),
            "unexpected message: {err}"
        );
    }

    #[test]
    fn serializes_as_a_plain_object_in_key_order() {
        let map: UniqueMap<u32> = [("b".to_owned(), 2), ("a".to_owned(), 1)]
            .into_iter()
            .collect();
        assert_eq!(serde_json::to_string(&map).unwrap(), r#"{"a":1,"b":2}"#);
        let back: UniqueMap<u32> = serde_json::from_str(r#"{"a":1,"b":2}"#).unwrap();
        assert_eq!(back, map);
        assert_eq!((&back).into_iter().count(), 2);
        assert_eq!(back.get("b"), Some(&2));
    }

    #[test]
    fn schema_is_an_object_of_the_value_schema() {
        let schema = schemars::schema_for!(UniqueMap<u32>).to_value();
        assert_eq!(schema["type"], "object");
        assert_eq!(schema["additionalProperties"]["type"], "integer");
    }
}
