//! Tensors of the Open Inference Protocol: datatypes, shapes and elements, read from and
//! written to JSON `data` arrays (flat or nested) and little-endian bytes (the binary tensor
//! extension and gRPC's `raw_*_contents`).

use std::fmt;

use serde::Serialize;
use serde_json::Value;

/// The datatypes the demo model computes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataType {
    /// `FP32`: 32-bit float.
    Fp32,
    /// `FP64`: 64-bit float.
    Fp64,
    /// `INT32`: 32-bit signed integer.
    Int32,
    /// `INT64`: 64-bit signed integer.
    Int64,
}

/// A tensor's elements in row-major order, typed by its datatype.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Elements {
    /// `FP32` elements.
    Fp32(Vec<f32>),
    /// `FP64` elements.
    Fp64(Vec<f64>),
    /// `INT32` elements.
    Int32(Vec<i32>),
    /// `INT64` elements.
    Int64(Vec<i64>),
}

/// A named tensor whose element count matches its shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// The tensor's name (`INPUT0`).
    pub name: String,
    /// Its dimensions, none negative.
    pub shape: Vec<i64>,
    /// Its elements; as many as the product of `shape`.
    pub data: Elements,
}

/// Why a tensor could not be read: a message naming the tensor and what was wrong, fit to
/// send back to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorError(pub String);

impl fmt::Display for TensorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TensorError {}

fn fail<T>(message: String) -> Result<T, TensorError> {
    Err(TensorError(message))
}

// === impl DataType ===

impl DataType {
    /// Every supported datatype.
    pub const ALL: [DataType; 4] = [
        DataType::Fp32,
        DataType::Fp64,
        DataType::Int32,
        DataType::Int64,
    ];

    /// Reads a protocol datatype name (`"FP32"`).
    ///
    /// # Errors
    ///
    /// For a name that is not one of [`DataType::ALL`].
    pub fn parse(name: &str) -> Result<DataType, TensorError> {
        match Self::ALL.into_iter().find(|t| t.name() == name) {
            Some(t) => Ok(t),
            None => fail(format!(
                "unsupported datatype {name:?}; the demo model takes FP32, FP64, INT32 or INT64"
            )),
        }
    }

    /// The protocol's name of the datatype (`"FP32"`).
    pub fn name(self) -> &'static str {
        match self {
            DataType::Fp32 => "FP32",
            DataType::Fp64 => "FP64",
            DataType::Int32 => "INT32",
            DataType::Int64 => "INT64",
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DataType::Fp32 | DataType::Int32 => 4,
            DataType::Fp64 | DataType::Int64 => 8,
        }
    }
}

// === impl Elements ===

impl Elements {
    /// The datatype of the elements.
    pub fn datatype(&self) -> DataType {
        match self {
            Elements::Fp32(_) => DataType::Fp32,
            Elements::Fp64(_) => DataType::Fp64,
            Elements::Int32(_) => DataType::Int32,
            Elements::Int64(_) => DataType::Int64,
        }
    }

    /// How many elements there are.
    pub fn len(&self) -> usize {
        match self {
            Elements::Fp32(v) => v.len(),
            Elements::Fp64(v) => v.len(),
            Elements::Int32(v) => v.len(),
            Elements::Int64(v) => v.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads a JSON `data` value of tensor `name`: an array of numbers, flat or nested to any
    /// depth (row-major), or a single number.
    ///
    /// # Errors
    ///
    /// When a leaf is not a number of `datatype` (an integer type takes only integers in its
    /// range), naming the tensor and the element.
    pub fn from_json(
        name: &str,
        datatype: DataType,
        data: &Value,
    ) -> Result<Elements, TensorError> {
        let mut leaves = Vec::new();
        flatten(data, &mut leaves);
        let bad = |i: usize, v: &Value| {
            TensorError(format!(
                "input {name}: element {i} is not {}: {v}",
                datatype.name()
            ))
        };
        let f64s = || {
            leaves
                .iter()
                .enumerate()
                .map(|(i, v)| v.as_f64().ok_or_else(|| bad(i, v)))
        };
        let i64s = || {
            leaves
                .iter()
                .enumerate()
                .map(|(i, v)| v.as_i64().ok_or_else(|| bad(i, v)))
        };
        Ok(match datatype {
            // Narrowing to f32 is what an FP32 tensor means.
            DataType::Fp32 => Elements::Fp32(
                f64s()
                    .map(|r| r.map(|x| x as f32))
                    .collect::<Result<_, _>>()?,
            ),
            DataType::Fp64 => Elements::Fp64(f64s().collect::<Result<_, _>>()?),
            DataType::Int32 => Elements::Int32(
                i64s()
                    .enumerate()
                    .map(|(i, r)| r.and_then(|x| i32::try_from(x).map_err(|_| bad(i, leaves[i]))))
                    .collect::<Result<_, _>>()?,
            ),
            DataType::Int64 => Elements::Int64(i64s().collect::<Result<_, _>>()?),
        })
    }

    /// Reads little-endian elements of `datatype` from `bytes` (of tensor `name`).
    ///
    /// # Errors
    ///
    /// When the length is not a multiple of the element size.
    pub fn from_le_bytes(
        name: &str,
        datatype: DataType,
        bytes: &[u8],
    ) -> Result<Elements, TensorError> {
        let size = datatype.size();
        if !bytes.len().is_multiple_of(size) {
            return fail(format!(
                "input {name}: {} bytes of binary data is not a whole number of {} elements ({size} bytes each)",
                bytes.len(),
                datatype.name()
            ));
        }
        let chunks = bytes.chunks_exact(size);
        Ok(match datatype {
            DataType::Fp32 => Elements::Fp32(chunks.map(|c| f32::from_le_bytes(word(c))).collect()),
            DataType::Fp64 => Elements::Fp64(chunks.map(|c| f64::from_le_bytes(word(c))).collect()),
            DataType::Int32 => {
                Elements::Int32(chunks.map(|c| i32::from_le_bytes(word(c))).collect())
            }
            DataType::Int64 => {
                Elements::Int64(chunks.map(|c| i64::from_le_bytes(word(c))).collect())
            }
        })
    }

    /// The elements as little-endian bytes, row-major.
    pub fn to_le_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len() * self.datatype().size());
        match self {
            Elements::Fp32(v) => v
                .iter()
                .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            Elements::Fp64(v) => v
                .iter()
                .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            Elements::Int32(v) => v
                .iter()
                .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            Elements::Int64(v) => v
                .iter()
                .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        }
        out
    }

    /// Every element times two (integers wrap on overflow), same datatype.
    pub fn doubled(&self) -> Elements {
        match self {
            Elements::Fp32(v) => Elements::Fp32(v.iter().map(|x| x * 2.0).collect()),
            Elements::Fp64(v) => Elements::Fp64(v.iter().map(|x| x * 2.0).collect()),
            Elements::Int32(v) => Elements::Int32(v.iter().map(|x| x.wrapping_mul(2)).collect()),
            Elements::Int64(v) => Elements::Int64(v.iter().map(|x| x.wrapping_mul(2)).collect()),
        }
    }
}

/// The `N` bytes of an exact chunk as an array.
fn word<const N: usize>(chunk: &[u8]) -> [u8; N] {
    chunk
        .try_into()
        .expect("chunks_exact yields chunks of the element size")
}

/// Pushes the leaves of `value` (an array nested to any depth, or a scalar) in row-major order.
fn flatten<'a>(value: &'a Value, out: &mut Vec<&'a Value>) {
    match value {
        Value::Array(items) => items.iter().for_each(|item| flatten(item, out)),
        leaf => out.push(leaf),
    }
}

// === impl Tensor ===

impl Tensor {
    /// A tensor, checked: no negative dimension, and as many elements as the shape holds.
    ///
    /// # Errors
    ///
    /// When either check fails, naming the tensor.
    pub fn new(name: String, shape: Vec<i64>, data: Elements) -> Result<Tensor, TensorError> {
        let Some(count) = element_count(&shape) else {
            return fail(format!("input {name}: invalid shape {shape:?}"));
        };
        if count != data.len() {
            return fail(format!(
                "input {name}: shape {shape:?} holds {count} elements but {} were given",
                data.len()
            ));
        }
        Ok(Tensor { name, shape, data })
    }

    /// The datatype of the elements.
    pub fn datatype(&self) -> DataType {
        self.data.datatype()
    }
}

/// The number of elements a shape holds; `None` for a negative dimension or an overflow.
pub fn element_count(shape: &[i64]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| {
        usize::try_from(d).ok().and_then(|d| acc.checked_mul(d))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn datatypes_are_read_by_their_protocol_names() {
        for t in DataType::ALL {
            assert_eq!(DataType::parse(t.name()), Ok(t));
        }
        let err = DataType::parse("BYTES").unwrap_err();
        assert!(err.0.contains("\"BYTES\""), "{err}");
    }

    #[test]
    fn json_data_is_read_flat_or_nested() {
        let flat = Elements::from_json("X", DataType::Fp32, &json!([1, 2.5, -3])).unwrap();
        let nested = Elements::from_json("X", DataType::Fp32, &json!([[1, 2.5], [-3]])).unwrap();
        assert_eq!(flat, Elements::Fp32(vec![1.0, 2.5, -3.0]));
        assert_eq!(nested, flat);
        let scalar = Elements::from_json("X", DataType::Int64, &json!(7)).unwrap();
        assert_eq!(scalar, Elements::Int64(vec![7]));
        let deep = Elements::from_json("X", DataType::Fp64, &json!([[[0.5]], [[1e300]]])).unwrap();
        assert_eq!(deep, Elements::Fp64(vec![0.5, 1e300]));
    }

    #[test]
    fn json_elements_must_fit_the_datatype() {
        let err = Elements::from_json("INPUT0", DataType::Int32, &json!([1, 2.5])).unwrap_err();
        assert_eq!(err.0, "input INPUT0: element 1 is not INT32: 2.5");
        let err = Elements::from_json("INPUT0", DataType::Int32, &json!([4_000_000_000_i64]))
            .unwrap_err();
        assert!(err.0.contains("element 0 is not INT32"), "{err}");
        let err = Elements::from_json("INPUT0", DataType::Fp32, &json!(["a"])).unwrap_err();
        assert!(err.0.contains("element 0 is not FP32: \"a\""), "{err}");
    }

    #[test]
    fn json_output_keeps_the_shortest_float_text() {
        let text = serde_json::to_string(&Elements::Fp32(vec![0.1, 2.0])).unwrap();
        assert_eq!(text, "[0.1,2.0]");
        let text = serde_json::to_string(&Elements::Int64(vec![-1, 2])).unwrap();
        assert_eq!(text, "[-1,2]");
    }

    #[test]
    fn binary_data_round_trips_for_every_datatype() {
        let cases = [
            Elements::Fp32(vec![1.5, -0.25, f32::MAX]),
            Elements::Fp64(vec![1e-300, -2.0]),
            Elements::Int32(vec![i32::MIN, 0, 7]),
            Elements::Int64(vec![i64::MAX, -9]),
        ];
        for elements in cases {
            let bytes = elements.to_le_bytes();
            assert_eq!(bytes.len(), elements.len() * elements.datatype().size());
            let back = Elements::from_le_bytes("X", elements.datatype(), &bytes).unwrap();
            assert_eq!(back, elements);
        }
    }

    #[test]
    fn binary_data_is_little_endian() {
        let bytes = Elements::Int32(vec![1, 256]).to_le_bytes();
        assert_eq!(bytes, [1, 0, 0, 0, 0, 1, 0, 0]);
        let back = Elements::from_le_bytes("X", DataType::Fp32, &1.0f32.to_le_bytes()).unwrap();
        assert_eq!(back, Elements::Fp32(vec![1.0]));
    }

    #[test]
    fn binary_data_must_hold_whole_elements() {
        let err = Elements::from_le_bytes("INPUT0", DataType::Fp64, &[0; 12]).unwrap_err();
        assert!(err.0.contains("12 bytes"), "{err}");
        assert!(err.0.contains("FP64"), "{err}");
    }

    #[test]
    fn doubling_keeps_the_datatype_and_wraps_integers() {
        assert_eq!(
            Elements::Fp32(vec![1.5, -2.0]).doubled(),
            Elements::Fp32(vec![3.0, -4.0])
        );
        assert_eq!(
            Elements::Int32(vec![i32::MAX, 3]).doubled(),
            Elements::Int32(vec![-2, 6])
        );
        assert_eq!(
            Elements::Int64(vec![5]).doubled(),
            Elements::Int64(vec![10])
        );
        assert_eq!(
            Elements::Fp64(vec![0.25]).doubled(),
            Elements::Fp64(vec![0.5])
        );
    }

    #[test]
    fn a_tensor_holds_as_many_elements_as_its_shape() {
        let ok = Tensor::new("X".into(), vec![2, 2], Elements::Int64(vec![1, 2, 3, 4]));
        assert!(ok.is_ok());
        let empty = Tensor::new("X".into(), vec![0, 3], Elements::Int64(vec![]));
        assert!(empty.is_ok());
        let err = Tensor::new("X".into(), vec![2, 3], Elements::Int64(vec![1])).unwrap_err();
        assert_eq!(
            err.0,
            "input X: shape [2, 3] holds 6 elements but 1 were given"
        );
        let err = Tensor::new("X".into(), vec![-1], Elements::Int64(vec![])).unwrap_err();
        assert_eq!(err.0, "input X: invalid shape [-1]");
    }
}
