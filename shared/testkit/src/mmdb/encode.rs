//! Data-section encoding: a control byte (type in the top three bits, size in the low five),
//! an optional extended-type byte, optional size bytes, then the payload. All big-endian.
//!
//! The writer never emits pointers (type 1): records are deduplicated whole, which keeps the
//! encoder a pure function of the value.

use super::{MmdbError, Record};

const TYPE_UTF8: u8 = 2;
const TYPE_DOUBLE: u8 = 3;
const TYPE_BYTES: u8 = 4;
const TYPE_UINT16: u8 = 5;
const TYPE_UINT32: u8 = 6;
const TYPE_MAP: u8 = 7;
const TYPE_INT32: u8 = 8;
const TYPE_UINT64: u8 = 9;
const TYPE_UINT128: u8 = 10;
const TYPE_ARRAY: u8 = 11;
const TYPE_BOOL: u8 = 14;

/// The largest payload size (or map/array entry count) a control byte can express.
const MAX_SIZE: usize = 65_821 + 0xFF_FFFF;

/// Appends the encoding of `record` to `out`.
pub(crate) fn encode(record: &Record, out: &mut Vec<u8>) -> Result<(), MmdbError> {
    match record {
        Record::Map(entries) => {
            control(out, TYPE_MAP, entries.len(), "map")?;
            for (key, value) in entries {
                encode_bytes(out, TYPE_UTF8, key.as_bytes(), "map key")?;
                encode(value, out)?;
            }
        }
        Record::Array(items) => {
            control(out, TYPE_ARRAY, items.len(), "array")?;
            for item in items {
                encode(item, out)?;
            }
        }
        Record::Utf8(s) => encode_bytes(out, TYPE_UTF8, s.as_bytes(), "string")?,
        Record::Bytes(b) => encode_bytes(out, TYPE_BYTES, b, "byte string")?,
        Record::Double(d) => encode_bytes(out, TYPE_DOUBLE, &d.to_be_bytes(), "double")?,
        Record::Uint16(n) => encode_uint(out, TYPE_UINT16, &n.to_be_bytes())?,
        Record::Uint32(n) => encode_uint(out, TYPE_UINT32, &n.to_be_bytes())?,
        Record::Uint64(n) => encode_uint(out, TYPE_UINT64, &n.to_be_bytes())?,
        Record::Uint128(n) => encode_uint(out, TYPE_UINT128, &n.to_be_bytes())?,
        // Why: shorter int32 fields are read as positive, so a negative value needs all 4 bytes.
        Record::Int32(n) if *n < 0 => encode_bytes(out, TYPE_INT32, &n.to_be_bytes(), "int32")?,
        Record::Int32(n) => encode_uint(out, TYPE_INT32, &n.to_be_bytes())?,
        // A boolean's value is its size (0 or 1); there is no payload.
        Record::Bool(b) => control(out, TYPE_BOOL, usize::from(*b), "boolean")?,
    }
    Ok(())
}

/// Unsigned integers drop leading zero bytes; zero itself has an empty payload.
fn encode_uint(out: &mut Vec<u8>, type_num: u8, be: &[u8]) -> Result<(), MmdbError> {
    let first = be.iter().position(|&b| b != 0).unwrap_or(be.len());
    encode_bytes(out, type_num, be.get(first..).unwrap_or_default(), "integer")
}

fn encode_bytes(out: &mut Vec<u8>, type_num: u8, payload: &[u8], what: &'static str) -> Result<(), MmdbError> {
    control(out, type_num, payload.len(), what)?;
    out.extend_from_slice(payload);
    Ok(())
}

/// Writes the control byte, the extended type byte (types above 7) and the size bytes.
fn control(out: &mut Vec<u8>, type_num: u8, size: usize, what: &'static str) -> Result<(), MmdbError> {
    let too_large = || MmdbError::value_too_large(what, size);
    let (size_bits, extra): (u8, Vec<u8>) = if size < 29 {
        (u8::try_from(size).map_err(|_| too_large())?, Vec::new())
    } else if size < 29 + 256 {
        (29, vec![u8::try_from(size - 29).map_err(|_| too_large())?])
    } else if size < 285 + 65_536 {
        let n = u16::try_from(size - 285).map_err(|_| too_large())?;
        (30, n.to_be_bytes().to_vec())
    } else if size <= MAX_SIZE {
        let n = u32::try_from(size - 65_821).map_err(|_| too_large())?;
        let [_, b1, b2, b3] = n.to_be_bytes();
        (31, vec![b1, b2, b3])
    } else {
        return Err(too_large());
    };

    if type_num <= 7 {
        out.push((type_num << 5) | size_bits);
    } else {
        out.push(size_bits);
        out.push(type_num - 7);
    }
    out.extend_from_slice(&extra);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(record: &Record) -> Vec<u8> {
        let mut out = Vec::new();
        encode(record, &mut out).unwrap();
        out
    }

    #[test]
    fn short_string_has_size_in_control_byte() {
        assert_eq!(bytes(&Record::from("AU")), vec![0b0100_0010, b'A', b'U']);
    }

    #[test]
    fn sizes_use_the_spec_examples() {
        // The spec's examples: 80 bytes -> 29 + one byte 51; 13,392 -> 30 + two bytes 13,107.
        let s80 = bytes(&Record::Utf8("a".repeat(80)));
        assert_eq!(s80.get(..2), Some(&[0b0101_1101, 51][..]));
        let s13392 = bytes(&Record::Utf8("a".repeat(13_392)));
        assert_eq!(s13392.get(..3), Some(&[0b0101_1110, 0x33, 0x33][..]));
        let s3m = bytes(&Record::Utf8("a".repeat(3_421_264)));
        assert_eq!(s3m.get(..4), Some(&[0b0101_1111, 0x33, 0x33, 0x33][..]));
    }

    #[test]
    fn extended_types_put_type_minus_seven_in_second_byte() {
        assert_eq!(bytes(&Record::Array(vec![])), vec![0, 4]);
        assert_eq!(bytes(&Record::Bool(true)), vec![1, 7]);
        assert_eq!(bytes(&Record::Uint128(3)), vec![1, 3, 3]);
    }

    #[test]
    fn integers_are_minimal_and_zero_is_empty() {
        assert_eq!(bytes(&Record::Uint32(0)), vec![0b1100_0000]);
        assert_eq!(bytes(&Record::Uint32(0x0102)), vec![0b1100_0010, 1, 2]);
        assert_eq!(bytes(&Record::Int32(-1)), vec![4, 1, 0xFF, 0xFF, 0xFF, 0xFF]);
        assert_eq!(bytes(&Record::Int32(5)), vec![1, 1, 5]);
    }

    #[test]
    fn map_is_pair_count_then_key_value_pairs() {
        assert_eq!(bytes(&Record::country_code("AU")), [&[0b1110_0001, 0b0100_1100][..], b"country_code", &[0b0100_0010], b"AU"].concat());
    }
}
