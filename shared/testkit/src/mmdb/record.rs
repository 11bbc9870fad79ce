//! The values a network can map to: one variant per MaxMind DB data type the writer emits.

use std::collections::BTreeMap;

use serde_json::Value;

use super::MmdbError;

/// A data-section value.
///
/// Maps are `BTreeMap`s so the encoded bytes (and therefore deduplication and the whole file)
/// do not depend on insertion order.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// MaxMind DB type 7; keys are always UTF-8 strings.
    Map(BTreeMap<String, Record>),
    /// MaxMind DB type 11.
    Array(Vec<Record>),
    /// MaxMind DB type 2.
    Utf8(String),
    /// MaxMind DB type 4.
    Bytes(Vec<u8>),
    /// MaxMind DB type 3 (IEEE-754 binary64).
    Double(f64),
    /// MaxMind DB type 5.
    Uint16(u16),
    /// MaxMind DB type 6.
    Uint32(u32),
    /// MaxMind DB type 9.
    Uint64(u64),
    /// MaxMind DB type 10.
    Uint128(u128),
    /// MaxMind DB type 8.
    Int32(i32),
    /// MaxMind DB type 14.
    Bool(bool),
}

impl Record {
    /// A map from `(key, value)` pairs; a repeated key keeps its last value.
    pub fn map<K, I>(entries: I) -> Self
    where
        K: Into<String>,
        I: IntoIterator<Item = (K, Record)>,
    {
        Record::Map(entries.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }

    /// `{ "country_code": CC }`, the layout of the ip-location-db country databases.
    pub fn country_code(country: &str) -> Self {
        Record::map([("country_code", Record::from(country))])
    }

    /// `{ "country": { "iso_code": CC }, "registered_country": { "iso_code": CC } }`, the part
    /// of the GeoIP2/GeoLite2 Country layout that country lookups read.
    pub fn geoip2_country(country: &str) -> Self {
        let iso = || Record::map([("iso_code", Record::from(country))]);
        Record::map([("country", iso()), ("registered_country", iso())])
    }
}

impl From<&str> for Record {
    fn from(value: &str) -> Self {
        Record::Utf8(value.to_owned())
    }
}

impl From<String> for Record {
    fn from(value: String) -> Self {
        Record::Utf8(value)
    }
}

impl From<u32> for Record {
    fn from(value: u32) -> Self {
        Record::Uint32(value)
    }
}

impl From<bool> for Record {
    fn from(value: bool) -> Self {
        Record::Bool(value)
    }
}

impl TryFrom<&Value> for Record {
    type Error = MmdbError;

    /// Objects become maps, arrays arrays, strings UTF-8 strings, booleans booleans; unsigned
    /// integers become `Uint32` when they fit and `Uint64` otherwise, negative integers `Int32`,
    /// and other numbers `Double`. `null` and negative numbers below `i32::MIN` are rejected
    /// with the JSON path of the value.
    fn try_from(value: &Value) -> Result<Self, Self::Error> {
        from_json(value, &mut String::from("record"))
    }
}

impl TryFrom<Value> for Record {
    type Error = MmdbError;

    fn try_from(value: Value) -> Result<Self, Self::Error> {
        Record::try_from(&value)
    }
}

fn from_json(value: &Value, path: &mut String) -> Result<Record, MmdbError> {
    match value {
        Value::Null => Err(MmdbError::unsupported_json(path.clone(), "null".to_owned())),
        Value::Bool(b) => Ok(Record::Bool(*b)),
        Value::String(s) => Ok(Record::Utf8(s.clone())),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                Ok(u32::try_from(u).map_or(Record::Uint64(u), Record::Uint32))
            } else if let Some(i) = n.as_i64() {
                i32::try_from(i).map(Record::Int32).map_err(|_| MmdbError::unsupported_json(path.clone(), format!("integer {i}")))
            } else if let Some(f) = n.as_f64() {
                Ok(Record::Double(f))
            } else {
                Err(MmdbError::unsupported_json(path.clone(), format!("number {n}")))
            }
        }
        Value::Array(items) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                out.push(from_json(item, path)?);
                path.truncate(len);
            }
            Ok(Record::Array(out))
        }
        Value::Object(fields) => {
            let mut out = BTreeMap::new();
            for (key, item) in fields {
                let len = path.len();
                path.push('.');
                path.push_str(key);
                out.insert(key.clone(), from_json(item, path)?);
                path.truncate(len);
            }
            Ok(Record::Map(out))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_numbers_pick_the_smallest_fitting_type() {
        let record = Record::try_from(json!([1, 4_294_967_296u64, -5, 1.5])).unwrap();
        assert_eq!(record, Record::Array(vec![Record::Uint32(1), Record::Uint64(4_294_967_296), Record::Int32(-5), Record::Double(1.5),]));
    }

    #[test]
    fn json_null_is_rejected_with_its_path() {
        let err = Record::try_from(json!({"country": {"names": [null]}})).unwrap_err();
        assert!(err.is_invalid_input());
        assert_eq!(err.to_string(), "record.country.names[0]: null has no MaxMind DB type");
    }

    #[test]
    fn json_integer_below_i32_is_rejected() {
        let err = Record::try_from(json!({"n": -3_000_000_000i64})).unwrap_err();
        assert_eq!(err.to_string(), "record.n: integer -3000000000 has no MaxMind DB type");
    }
}
