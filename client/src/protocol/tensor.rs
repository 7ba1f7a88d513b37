//! Tensor datatypes and data as the Open Inference Protocol carries them in JSON.

use serde::de::{self, DeserializeSeed, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use std::fmt;

/// The OIP (KServe V2) tensor datatypes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum DataType {
    /// `BOOL`
    Bool,
    /// `UINT8`
    Uint8,
    /// `UINT16`
    Uint16,
    /// `UINT32`
    Uint32,
    /// `UINT64` (values above `i64::MAX` are refused)
    Uint64,
    /// `INT8`
    Int8,
    /// `INT16`
    Int16,
    /// `INT32`
    Int32,
    /// `INT64`
    Int64,
    /// `FP16` (carried as `f32`, range-checked)
    Fp16,
    /// `BF16` (bfloat16: carried as `f32`, range-checked)
    Bf16,
    /// `FP32`
    Fp32,
    /// `FP64`
    Fp64,
    /// `BYTES` (UTF-8 strings in JSON)
    Bytes,
}

impl DataType {
    /// The name as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bool => "BOOL",
            Self::Uint8 => "UINT8",
            Self::Uint16 => "UINT16",
            Self::Uint32 => "UINT32",
            Self::Uint64 => "UINT64",
            Self::Int8 => "INT8",
            Self::Int16 => "INT16",
            Self::Int32 => "INT32",
            Self::Int64 => "INT64",
            Self::Fp16 => "FP16",
            Self::Bf16 => "BF16",
            Self::Fp32 => "FP32",
            Self::Fp64 => "FP64",
            Self::Bytes => "BYTES",
        }
    }

    /// Inclusive integer range of an integer type; `None` for the others.
    fn int_range(self) -> Option<(i64, i64)> {
        Some(match self {
            Self::Uint8 => (0, u8::MAX.into()),
            Self::Uint16 => (0, u16::MAX.into()),
            Self::Uint32 => (0, u32::MAX.into()),
            Self::Uint64 => (0, i64::MAX),
            Self::Int8 => (i8::MIN.into(), i8::MAX.into()),
            Self::Int16 => (i16::MIN.into(), i16::MAX.into()),
            Self::Int32 => (i32::MIN.into(), i32::MAX.into()),
            Self::Int64 => (i64::MIN, i64::MAX),
            _ => return None,
        })
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Tensor elements in row-major order, in the smallest Rust type that holds every datatype mapped to it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum TensorData {
    /// FP16, FP32.
    F32(Vec<f32>),
    /// FP64.
    F64(Vec<f64>),
    /// All integer datatypes.
    I64(Vec<i64>),
    /// BOOL.
    Bool(Vec<bool>),
    /// BYTES.
    Bytes(Vec<String>),
}

impl TensorData {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Self::F32(v) => v.len(),
            Self::F64(v) => v.len(),
            Self::I64(v) => v.len(),
            Self::Bool(v) => v.len(),
            Self::Bytes(v) => v.len(),
        }
    }

    /// True when there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The elements as `f32`, if that is how they are held.
    pub fn as_f32(&self) -> Option<&[f32]> {
        match self {
            Self::F32(v) => Some(v),
            _ => None,
        }
    }

    /// An empty buffer of the variant `datatype` maps to, with room for `capacity` elements.
    pub fn with_capacity(datatype: DataType, capacity: usize) -> Self {
        match datatype {
            DataType::Fp16 | DataType::Bf16 | DataType::Fp32 => {
                Self::F32(Vec::with_capacity(capacity))
            }
            DataType::Fp64 => Self::F64(Vec::with_capacity(capacity)),
            DataType::Bool => Self::Bool(Vec::with_capacity(capacity)),
            DataType::Bytes => Self::Bytes(Vec::with_capacity(capacity)),
            _ => Self::I64(Vec::with_capacity(capacity)),
        }
    }

    /// An empty buffer of the same variant as `other`, with room for `capacity` elements.
    pub fn with_capacity_like(other: &Self, capacity: usize) -> Self {
        match other {
            Self::F32(_) => Self::F32(Vec::with_capacity(capacity)),
            Self::F64(_) => Self::F64(Vec::with_capacity(capacity)),
            Self::I64(_) => Self::I64(Vec::with_capacity(capacity)),
            Self::Bool(_) => Self::Bool(Vec::with_capacity(capacity)),
            Self::Bytes(_) => Self::Bytes(Vec::with_capacity(capacity)),
        }
    }

    /// `len` zeros (false, empty strings) of `datatype`: warm-up input.
    pub fn zeros(datatype: DataType, len: usize) -> Self {
        match Self::with_capacity(datatype, 0) {
            Self::F32(_) => Self::F32(vec![0.0; len]),
            Self::F64(_) => Self::F64(vec![0.0; len]),
            Self::I64(_) => Self::I64(vec![0; len]),
            Self::Bool(_) => Self::Bool(vec![false; len]),
            Self::Bytes(_) => Self::Bytes(vec![String::new(); len]),
        }
    }

    /// Appends elements `range` of `other` (same variant) to `self`.
    pub fn extend_from(&mut self, other: &Self, range: std::ops::Range<usize>) {
        match (self, other) {
            (Self::F32(a), Self::F32(b)) => a.extend_from_slice(&b[range]),
            (Self::F64(a), Self::F64(b)) => a.extend_from_slice(&b[range]),
            (Self::I64(a), Self::I64(b)) => a.extend_from_slice(&b[range]),
            (Self::Bool(a), Self::Bool(b)) => a.extend_from_slice(&b[range]),
            (Self::Bytes(a), Self::Bytes(b)) => a.extend_from_slice(&b[range]),
            (a, b) => unreachable!("extend_from across variants: {a:?} <- {b:?}"),
        }
    }

    /// Parses JSON `data` (a flat or nested array) as elements of `datatype`.
    ///
    /// Refuses values outside the datatype's range and non-finite floats (JSON has no NaN or
    /// infinity; a number too large for FP32/FP16 would become one).
    pub fn from_json(
        json: &str,
        datatype: DataType,
        capacity_hint: usize,
    ) -> Result<Self, serde_json::Error> {
        let mut data = Self::with_capacity(datatype, capacity_hint);
        let mut de = serde_json::Deserializer::from_str(json);
        let seed = Flatten {
            out: &mut data,
            datatype,
            depth: 0,
        };
        // The top level must be an array: `deserialize_seq` refuses a bare scalar.
        de::Deserializer::deserialize_seq(&mut de, seed)?;
        de.end()?;
        Ok(data)
    }
}

/// Nesting deeper than this is refused (no tensor here has more dimensions).
const MAX_DEPTH: usize = 16;

/// Pushes every scalar of a (possibly nested) JSON array into `out`, checked against `datatype`.
struct Flatten<'a> {
    out: &'a mut TensorData,
    datatype: DataType,
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for Flatten<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Flatten<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "an array of {} values", self.datatype)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if self.depth >= MAX_DEPTH {
            return Err(de::Error::custom("data is nested too deeply"));
        }
        let (out, datatype, depth) = (self.out, self.datatype, self.depth + 1);
        while seq
            .next_element_seed(Flatten {
                out: &mut *out,
                datatype,
                depth,
            })?
            .is_some()
        {}
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        match i64::try_from(v) {
            Ok(v) => self.visit_i64(v),
            Err(_) => self.push_float(v as f64),
        }
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        if let (Some((lo, hi)), TensorData::I64(out)) = (self.datatype.int_range(), &mut *self.out)
        {
            if v < lo || v > hi {
                return Err(E::custom(format!(
                    "{v} is out of range for {}",
                    self.datatype
                )));
            }
            out.push(v);
            return Ok(());
        }
        self.push_float(v as f64)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.push_float(v)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        match self.out {
            TensorData::Bool(out) => {
                out.push(v);
                Ok(())
            }
            _ => Err(self.type_error("a boolean")),
        }
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        match self.out {
            TensorData::Bytes(out) => {
                out.push(v.to_owned());
                Ok(())
            }
            _ => Err(self.type_error("a string")),
        }
    }
}

/// The largest finite bfloat16.
const BF16_MAX: f32 = 3.389_531_4e38;

impl Flatten<'_> {
    fn push_float<E: de::Error>(self, v: f64) -> Result<(), E> {
        let datatype = self.datatype;
        match self.out {
            TensorData::F32(out) => {
                let x = v as f32;
                let limit = match datatype {
                    DataType::Fp16 => 65504.0,
                    DataType::Bf16 => BF16_MAX,
                    _ => f32::MAX,
                };
                if !x.is_finite() || x.abs() > limit {
                    return Err(E::custom(format!("{v} is not a finite {datatype} value")));
                }
                out.push(x);
                Ok(())
            }
            TensorData::F64(out) => {
                out.push(v);
                Ok(())
            }
            _ => Err(self.type_error("a number")),
        }
    }

    fn type_error<E: de::Error>(&self, found: &str) -> E {
        E::custom(format!("found {found} in {} data", self.datatype))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_flat_and_nested_arrays_alike() {
        let flat = TensorData::from_json("[1, 2.5, 3]", DataType::Fp32, 3).unwrap();
        let nested = TensorData::from_json("[[1, 2.5], [3]]", DataType::Fp32, 3).unwrap();
        assert_eq!(flat, TensorData::F32(vec![1.0, 2.5, 3.0]));
        assert_eq!(flat, nested);
    }

    #[test]
    fn refuses_values_outside_the_datatype() {
        assert!(TensorData::from_json("[256]", DataType::Uint8, 1).is_err());
        assert!(TensorData::from_json("[-1]", DataType::Uint32, 1).is_err());
        assert!(TensorData::from_json("[1.5]", DataType::Int64, 1).is_err());
        assert!(TensorData::from_json("[70000]", DataType::Fp16, 1).is_err());
        assert!(TensorData::from_json("[1e39]", DataType::Fp32, 1).is_err());
        assert!(TensorData::from_json("[\"a\"]", DataType::Fp32, 1).is_err());
        assert!(TensorData::from_json("[true]", DataType::Int32, 1).is_err());
    }

    #[test]
    fn refuses_nan_and_bare_scalars() {
        assert!(TensorData::from_json("[NaN]", DataType::Fp32, 1).is_err());
        assert!(TensorData::from_json("3", DataType::Fp32, 1).is_err());
        let deep = format!("{}1{}", "[".repeat(40), "]".repeat(40));
        assert!(TensorData::from_json(&deep, DataType::Fp32, 1).is_err());
    }

    #[test]
    fn parses_every_kind_of_element() {
        assert_eq!(
            TensorData::from_json("[-128, 127]", DataType::Int8, 2).unwrap(),
            TensorData::I64(vec![-128, 127])
        );
        assert_eq!(
            TensorData::from_json("[true, false]", DataType::Bool, 2).unwrap(),
            TensorData::Bool(vec![true, false])
        );
        assert_eq!(
            TensorData::from_json("[\"hi\", \"\\u00e9\"]", DataType::Bytes, 2).unwrap(),
            TensorData::Bytes(vec!["hi".into(), "é".into()])
        );
        assert_eq!(
            TensorData::from_json("[1, 0.5]", DataType::Fp64, 2).unwrap(),
            TensorData::F64(vec![1.0, 0.5])
        );
    }
}
