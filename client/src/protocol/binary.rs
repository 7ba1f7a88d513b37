//! The binary tensor data extension of the Open Inference Protocol (as KServe and Triton define
//! it): a body is a JSON header followed by the raw bytes of some tensors, in the order the header
//! lists them. The header's length travels beside the body (`Inference-Header-Content-Length`);
//! each binary tensor says its byte length in `parameters.binary_data_size` and has no `data`.
//! Elements are little-endian; BOOL is one byte (0 or 1); each BYTES element is a 4-byte
//! little-endian length followed by that many bytes.

use super::{DataType, TensorData};

/// Bytes of one element of `datatype` in binary; `None` for BYTES (each element is
/// length-prefixed).
pub fn element_size(datatype: DataType) -> Option<usize> {
    Some(match datatype {
        DataType::Bool | DataType::Uint8 | DataType::Int8 => 1,
        DataType::Uint16 | DataType::Int16 | DataType::Fp16 | DataType::Bf16 => 2,
        DataType::Uint32 | DataType::Int32 | DataType::Fp32 => 4,
        DataType::Uint64 | DataType::Int64 | DataType::Fp64 => 8,
        DataType::Bytes => return None,
    })
}

/// The `elements` elements of `datatype` that `raw` holds, checked as the JSON form is: integers
/// within range, floats finite, BOOL 0 or 1, BYTES UTF-8. Allocates no more than `raw` justifies.
pub fn decode(raw: &[u8], datatype: DataType, elements: usize) -> Result<TensorData, String> {
    let Some(size) = element_size(datatype) else {
        return decode_bytes(raw, elements);
    };
    let expected = elements.checked_mul(size);
    if expected != Some(raw.len()) {
        return Err(format!(
            "binary_data_size {} is not {elements} elements of {} bytes ({})",
            raw.len(),
            size,
            datatype.as_str()
        ));
    }
    let words = |n: usize| raw.chunks_exact(n);
    let data = match datatype {
        DataType::Fp32 => TensorData::F32(finite(
            words(4)
                .map(|w| f32::from_le_bytes(w.try_into().expect("4 bytes")))
                .collect(),
        )?),
        DataType::Fp16 => TensorData::F32(finite(
            words(2)
                .map(|w| f16_to_f32(u16::from_le_bytes(w.try_into().expect("2 bytes"))))
                .collect(),
        )?),
        DataType::Bf16 => TensorData::F32(finite(
            words(2)
                .map(|w| bf16_to_f32(u16::from_le_bytes(w.try_into().expect("2 bytes"))))
                .collect(),
        )?),
        DataType::Fp64 => {
            let values: Vec<f64> = words(8)
                .map(|w| f64::from_le_bytes(w.try_into().expect("8 bytes")))
                .collect();
            if let Some(at) = values.iter().position(|v| !v.is_finite()) {
                return Err(format!("element {at} is not a finite number"));
            }
            TensorData::F64(values)
        }
        DataType::Bool => TensorData::Bool(
            raw.iter()
                .enumerate()
                .map(|(at, &b)| match b {
                    0 => Ok(false),
                    1 => Ok(true),
                    _ => Err(format!("element {at} is {b}, not a BOOL (0 or 1)")),
                })
                .collect::<Result<_, _>>()?,
        ),
        DataType::Uint8 => TensorData::I64(raw.iter().map(|&b| i64::from(b)).collect()),
        DataType::Int8 => TensorData::I64(raw.iter().map(|&b| i64::from(b as i8)).collect()),
        DataType::Uint16 => integers::<2>(raw, |w| i64::from(u16::from_le_bytes(w))),
        DataType::Int16 => integers::<2>(raw, |w| i64::from(i16::from_le_bytes(w))),
        DataType::Uint32 => integers::<4>(raw, |w| i64::from(u32::from_le_bytes(w))),
        DataType::Int32 => integers::<4>(raw, |w| i64::from(i32::from_le_bytes(w))),
        DataType::Int64 => integers::<8>(raw, i64::from_le_bytes),
        DataType::Uint64 => TensorData::I64(
            words(8)
                .enumerate()
                .map(|(at, w)| {
                    let value = u64::from_le_bytes(w.try_into().expect("8 bytes"));
                    i64::try_from(value)
                        .map_err(|_| format!("element {at} ({value}) is over the INT64 range"))
                })
                .collect::<Result<_, _>>()?,
        ),
        DataType::Bytes => unreachable!("BYTES has no element size"),
    };
    Ok(data)
}

/// The `N`-byte integers of `raw`, each read by `read`.
fn integers<const N: usize>(raw: &[u8], read: impl Fn([u8; N]) -> i64) -> TensorData {
    let words = raw.chunks_exact(N);
    TensorData::I64(
        words
            .map(|w| read(w.try_into().expect("N bytes")))
            .collect(),
    )
}

/// `values`, refused if one is not finite (as JSON cannot carry one either). Converted first and
/// checked in a second pass: both loops vectorise, where a fallible conversion would not.
fn finite(values: Vec<f32>) -> Result<Vec<f32>, String> {
    if values.iter().all(|v| v.is_finite()) {
        return Ok(values);
    }
    let at = values
        .iter()
        .position(|v| !v.is_finite())
        .unwrap_or_default();
    Err(format!("element {at} is not a finite number"))
}

/// BYTES elements: each a 4-byte little-endian length, then that many bytes of UTF-8.
fn decode_bytes(mut raw: &[u8], elements: usize) -> Result<TensorData, String> {
    // At least 4 bytes per element: a shape claiming more cannot reserve more than `raw` allows.
    let mut texts = Vec::with_capacity(elements.min(raw.len() / 4));
    for at in 0..elements {
        let Some((length, rest)) = raw.split_first_chunk::<4>() else {
            return Err(format!(
                "element {at}: its 4-byte length is past the tensor's bytes"
            ));
        };
        let length = u32::from_le_bytes(*length) as usize;
        let Some((text, rest)) = rest.split_at_checked(length) else {
            return Err(format!(
                "element {at}: its length {length} is past the tensor's bytes"
            ));
        };
        let text = std::str::from_utf8(text)
            .map_err(|_| format!("element {at} is not UTF-8 (BYTES are carried as text)"))?;
        texts.push(text.to_owned());
        raw = rest;
    }
    if !raw.is_empty() {
        return Err(format!(
            "{} bytes left after its {elements} elements",
            raw.len()
        ));
    }
    Ok(TensorData::Bytes(texts))
}

/// Appends `data` as `datatype` in binary to `out`; returns the bytes written.
pub fn encode(data: &TensorData, datatype: DataType, out: &mut Vec<u8>) -> usize {
    let start = out.len();
    match data {
        TensorData::F32(values) => {
            for &v in values {
                match datatype {
                    DataType::Fp16 => out.extend_from_slice(&f32_to_f16(v).to_le_bytes()),
                    DataType::Bf16 => out.extend_from_slice(&f32_to_bf16(v).to_le_bytes()),
                    DataType::Fp64 => out.extend_from_slice(&f64::from(v).to_le_bytes()),
                    _ => out.extend_from_slice(&v.to_le_bytes()),
                }
            }
        }
        TensorData::F64(values) => {
            for &v in values {
                match datatype {
                    DataType::Fp32 => out.extend_from_slice(&(v as f32).to_le_bytes()),
                    _ => out.extend_from_slice(&v.to_le_bytes()),
                }
            }
        }
        TensorData::I64(values) => {
            let size = element_size(datatype).unwrap_or(8);
            for &v in values {
                out.extend_from_slice(&v.to_le_bytes()[..size]);
            }
        }
        TensorData::Bool(values) => out.extend(values.iter().map(|&b| u8::from(b))),
        TensorData::Bytes(texts) => {
            for text in texts {
                let length = u32::try_from(text.len()).expect("a BYTES element under 4 GiB");
                out.extend_from_slice(&length.to_le_bytes());
                out.extend_from_slice(text.as_bytes());
            }
        }
    }
    out.len() - start
}

/// IEEE 754 half precision to single (exact: every half is a float).
/// bfloat16 to single precision: exact (the upper half of an `f32`).
fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits(u32::from(bits) << 16)
}

/// Single precision to bfloat16, rounding to nearest even (NaN stays NaN).
fn f32_to_bf16(value: f32) -> u16 {
    let bits = value.to_bits();
    if value.is_nan() {
        return ((bits >> 16) | 0x40) as u16;
    }
    let rounded = bits + 0x7fff + ((bits >> 16) & 1);
    (rounded >> 16) as u16
}

fn f16_to_f32(bits: u16) -> f32 {
    let sign = u32::from(bits >> 15) << 31;
    let exponent = u32::from((bits >> 10) & 0x1f);
    let mantissa = u32::from(bits & 0x3ff);
    let magnitude = match (exponent, mantissa) {
        // Zero, or subnormal: mantissa × 2^-24, exact in f32.
        (0, m) => (m as f32 * f32::powi(2.0, -24)).to_bits(),
        (0x1f, m) => 0xff << 23 | m << 13,
        (e, m) => (e + 127 - 15) << 23 | m << 13,
    };
    f32::from_bits(sign | magnitude)
}

/// Single precision to half, rounding to nearest even (values past the half range become
/// infinite; outputs are range-checked before they are sent).
fn f32_to_f16(value: f32) -> u16 {
    let bits = value.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exponent = ((bits >> 23) & 0xff) as i32;
    let mantissa = bits & 0x7f_ffff;
    if exponent == 0xff {
        return sign | 0x7c00 | if mantissa != 0 { 0x200 } else { 0 };
    }
    let half_exponent = exponent - 127 + 15;
    if half_exponent >= 0x1f {
        return sign | 0x7c00;
    }
    if half_exponent <= 0 {
        if half_exponent < -10 {
            return sign;
        }
        let mantissa = mantissa | 0x80_0000;
        let shift = (14 - half_exponent) as u32;
        let half = mantissa >> shift;
        let rest = mantissa & ((1 << shift) - 1);
        let halfway = 1 << (shift - 1);
        let round = u32::from(rest > halfway || (rest == halfway && half & 1 == 1));
        return sign | (half + round) as u16;
    }
    let half = ((half_exponent as u32) << 10) | (mantissa >> 13);
    let rest = mantissa & 0x1fff;
    let round = u32::from(rest > 0x1000 || (rest == 0x1000 && half & 1 == 1));
    sign | (half + round) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_datatype_round_trips() {
        let cases = [
            (DataType::Fp32, TensorData::F32(vec![1.5, -2.25, 0.0])),
            (DataType::Fp16, TensorData::F32(vec![1.5, -2.25, 65504.0])),
            (
                DataType::Bf16,
                TensorData::F32(vec![1.5, -2.25, 3.389_531_4e38]),
            ),
            (DataType::Fp64, TensorData::F64(vec![1e300, -2.5])),
            (DataType::Int8, TensorData::I64(vec![-128, 127])),
            (DataType::Uint8, TensorData::I64(vec![0, 255])),
            (DataType::Int16, TensorData::I64(vec![-32768, 32767])),
            (DataType::Uint16, TensorData::I64(vec![0, 65535])),
            (
                DataType::Int32,
                TensorData::I64(vec![i64::from(i32::MIN), 7]),
            ),
            (
                DataType::Uint32,
                TensorData::I64(vec![0, i64::from(u32::MAX)]),
            ),
            (DataType::Int64, TensorData::I64(vec![i64::MIN, i64::MAX])),
            (DataType::Uint64, TensorData::I64(vec![0, i64::MAX])),
            (DataType::Bool, TensorData::Bool(vec![true, false])),
            (
                DataType::Bytes,
                TensorData::Bytes(vec!["héllo".into(), String::new()]),
            ),
        ];
        for (datatype, data) in cases {
            let mut raw = Vec::new();
            let written = encode(&data, datatype, &mut raw);
            assert_eq!(written, raw.len());
            assert_eq!(
                decode(&raw, datatype, data.len()).unwrap(),
                data,
                "{datatype:?}"
            );
        }
    }

    #[test]
    fn half_precision_converts_exactly() {
        for (bits, value) in [
            (0x3c00, 1.0),
            (0xc000, -2.0),
            (0x7bff, 65504.0),
            (0x0001, 5.960_464_5e-8),
            (0x8001, -5.960_464_5e-8),
            (0x0000, 0.0),
        ] {
            assert_eq!(f16_to_f32(bits), value, "{bits:#06x}");
            assert_eq!(f32_to_f16(value), bits, "{value}");
        }
        assert!(f16_to_f32(0x7c00).is_infinite());
        assert!(f16_to_f32(0x7e00).is_nan());
        assert_eq!(f32_to_f16(1.0 + f32::EPSILON), 0x3c00, "rounds to nearest");
        for (bits, value) in [(0x3f80, 1.0), (0xc000, -2.0), (0x7f7f, 3.389_531_4e38)] {
            assert_eq!(bf16_to_f32(bits), value, "{bits:#06x}");
            assert_eq!(f32_to_bf16(value), bits, "{value}");
        }
        // 1 + 2^-8 is halfway between 1 and the next bfloat16: to even (1); past it, up.
        assert_eq!(f32_to_bf16(1.0 + 2f32.powi(-8)), 0x3f80);
        assert_eq!(f32_to_bf16(1.0 + 3.0 * 2f32.powi(-8)), 0x3f82);
        assert!(bf16_to_f32(f32_to_bf16(f32::NAN)).is_nan());
        assert!(refused_bf16(0x7f80).contains("finite"), "infinity");
    }

    fn refused_bf16(bits: u16) -> String {
        decode(&bits.to_le_bytes(), DataType::Bf16, 1).expect_err("refused")
    }

    #[test]
    fn bad_bytes_are_refused_naming_the_problem() {
        let refused =
            |raw: &[u8], datatype, elements| decode(raw, datatype, elements).expect_err("refused");
        assert!(refused(&[0; 7], DataType::Fp32, 2).contains("is not 2 elements of 4 bytes"));
        assert!(refused(&[0; 8], DataType::Fp32, usize::MAX).contains("is not"));
        assert!(refused(&f32::NAN.to_le_bytes(), DataType::Fp32, 1).contains("finite"));
        assert!(refused(&[2], DataType::Bool, 1).contains("not a BOOL"));
        assert!(refused(&u64::MAX.to_le_bytes(), DataType::Uint64, 1).contains("INT64 range"));
        assert!(refused(&[5, 0, 0, 0, b'a'], DataType::Bytes, 1).contains("length 5 is past"));
        assert!(refused(&[1, 0], DataType::Bytes, 1).contains("4-byte length"));
        assert!(refused(&[1, 0, 0, 0, 0xff], DataType::Bytes, 1).contains("not UTF-8"));
        assert!(refused(&[0, 0, 0, 0, 9], DataType::Bytes, 1).contains("1 bytes left"));
        // A shape claiming a billion strings over 8 bytes reserves two, then stops.
        assert!(refused(&[0; 8], DataType::Bytes, 1 << 30).contains("element 2"));
    }
}
