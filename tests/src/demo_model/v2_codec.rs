//! The HTTP/REST form of an Open Inference Protocol (V2) inference request and response,
//! with the binary tensor extension:
//!
//! - a request body is JSON, or, with an `Inference-Header-Content-Length: N` header, N bytes
//!   of JSON followed by the raw bytes of the inputs that carry
//!   `parameters.binary_data_size`, in input order;
//! - a response output is written raw after the JSON when the request asked for it
//!   (`outputs[].parameters.binary_data`, else the request's
//!   `parameters.binary_data_output`); the response then carries
//!   `Inference-Header-Content-Length` too. Otherwise its elements are a flat JSON `data`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::tensor::{DataType, Elements, Tensor, TensorError};

/// The header giving the length of the JSON part of a body with binary tensors.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// The content type of a response with binary tensors after its JSON.
pub const BINARY_CONTENT_TYPE: &str = "application/octet-stream";

/// A decoded inference request.
#[derive(Debug, Clone, PartialEq)]
pub struct InferRequest {
    /// The request's `id`, echoed in the response.
    pub id: Option<String>,
    /// The input tensors, checked against their shapes.
    pub inputs: Vec<Tensor>,
    /// The outputs the request names (none: every output).
    pub outputs: Vec<RequestedOutput>,
    /// The request's `parameters.binary_data_output`: every output raw unless its own
    /// request says otherwise.
    pub binary_data_output: bool,
}

/// An output named in a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestedOutput {
    /// The output's name.
    pub name: String,
    /// Its `parameters.binary_data`, when given.
    pub binary_data: Option<bool>,
}

/// The parts of a response that are not outputs.
#[derive(Debug, Clone, Copy)]
pub struct ResponseHead<'a> {
    /// The model that answered.
    pub model_name: &'a str,
    /// Its version.
    pub model_version: &'a str,
    /// The request's `id`, when it had one.
    pub id: Option<&'a str>,
    /// The instance that answered (`parameters.instance`).
    pub instance: &'a str,
}

/// An encoded response body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedResponse {
    /// The JSON, followed by the raw outputs when there are any.
    pub body: Vec<u8>,
    /// The length of the JSON part when raw outputs follow it (the value of
    /// [`HEADER_LENGTH`]); `None` for a plain JSON body.
    pub header_length: Option<usize>,
}

type Parameters = Map<String, Value>;

#[derive(Deserialize)]
struct RequestJson {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Parameters,
    inputs: Vec<InputJson>,
    #[serde(default)]
    outputs: Vec<OutputJson>,
}

#[derive(Deserialize)]
struct InputJson {
    name: String,
    datatype: String,
    shape: Vec<i64>,
    #[serde(default)]
    parameters: Parameters,
    #[serde(default)]
    data: Option<Value>,
}

#[derive(Deserialize)]
struct OutputJson {
    name: String,
    #[serde(default)]
    parameters: Parameters,
}

#[derive(Serialize)]
struct ResponseJson<'a> {
    model_name: &'a str,
    model_version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    parameters: InstanceParameter<'a>,
    outputs: Vec<OutputOut<'a>>,
}

#[derive(Serialize)]
struct InstanceParameter<'a> {
    instance: &'a str,
}

#[derive(Serialize)]
struct OutputOut<'a> {
    name: &'a str,
    datatype: &'static str,
    shape: &'a [i64],
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<BinarySize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a Elements>,
}

#[derive(Serialize)]
struct BinarySize {
    binary_data_size: usize,
}

// === impl InferRequest ===

impl InferRequest {
    /// The names of the requested outputs.
    pub fn requested_names(&self) -> Vec<String> {
        self.outputs.iter().map(|o| o.name.clone()).collect()
    }

    /// Whether output `name` goes raw after the JSON.
    pub fn wants_binary(&self, name: &str) -> bool {
        self.outputs
            .iter()
            .find(|o| o.name == name)
            .and_then(|o| o.binary_data)
            .unwrap_or(self.binary_data_output)
    }
}

/// Decodes a request body; `header_length` is the request's [`HEADER_LENGTH`], when given.
///
/// # Errors
///
/// When the JSON does not parse as a request, a parameter has the wrong type, an input has
/// neither `data` nor binary data, the binary data does not add up, or a tensor does not match
/// its datatype or shape; the message names what was wrong.
pub fn decode_request(
    body: &[u8],
    header_length: Option<usize>,
) -> Result<InferRequest, TensorError> {
    let (json, mut binary) = match header_length {
        Some(n) if n > body.len() => {
            return Err(TensorError(format!(
                "the {HEADER_LENGTH} header ({n}) is longer than the body ({} bytes)",
                body.len()
            )));
        }
        Some(n) => body.split_at(n),
        None => (body, &[][..]),
    };
    let request: RequestJson = serde_json::from_slice(json)
        .map_err(|e| TensorError(format!("the request is not a valid inference request: {e}")))?;

    let mut inputs = Vec::with_capacity(request.inputs.len());
    for input in request.inputs {
        let datatype = DataType::parse(&input.datatype)
            .map_err(|e| TensorError(format!("input {}: {e}", input.name)))?;
        let size = parameter_usize(&input.parameters, "binary_data_size", &input.name)?;
        let data = match (size, &input.data) {
            (Some(_), _) if header_length.is_none() => {
                return Err(TensorError(format!(
                    "input {} has parameters.binary_data_size but the request has no {HEADER_LENGTH} header",
                    input.name
                )));
            }
            (Some(size), _) => {
                if size > binary.len() {
                    return Err(TensorError(format!(
                        "input {}: binary_data_size {size} is more than the {} bytes of binary data left",
                        input.name,
                        binary.len()
                    )));
                }
                let (mine, rest) = binary.split_at(size);
                binary = rest;
                Elements::from_le_bytes(&input.name, datatype, mine)?
            }
            (None, Some(data)) => Elements::from_json(&input.name, datatype, data)?,
            (None, None) => {
                return Err(TensorError(format!(
                    "input {} has neither data nor parameters.binary_data_size",
                    input.name
                )));
            }
        };
        inputs.push(Tensor::new(input.name, input.shape, data)?);
    }
    if !binary.is_empty() {
        return Err(TensorError(format!(
            "{} bytes of binary data follow the inputs' binary_data_size",
            binary.len()
        )));
    }

    let mut outputs = Vec::with_capacity(request.outputs.len());
    for output in request.outputs {
        let binary_data = parameter_bool(&output.parameters, "binary_data", &output.name)?;
        outputs.push(RequestedOutput {
            name: output.name,
            binary_data,
        });
    }
    let binary_data_output =
        parameter_bool(&request.parameters, "binary_data_output", "the request")?.unwrap_or(false);
    Ok(InferRequest {
        id: request.id,
        inputs,
        outputs,
        binary_data_output,
    })
}

/// Encodes a response: `binary(output)` says which outputs go raw after the JSON.
pub fn encode_response(
    head: &ResponseHead<'_>,
    outputs: &[Tensor],
    binary: impl Fn(&Tensor) -> bool,
) -> EncodedResponse {
    let mut raw = Vec::new();
    let mut any_binary = false;
    let outs = outputs
        .iter()
        .map(|t| {
            let is_binary = binary(t);
            let mut out = OutputOut {
                name: &t.name,
                datatype: t.datatype().name(),
                shape: &t.shape,
                parameters: None,
                data: None,
            };
            if is_binary {
                any_binary = true;
                let bytes = t.data.to_le_bytes();
                out.parameters = Some(BinarySize {
                    binary_data_size: bytes.len(),
                });
                raw.extend_from_slice(&bytes);
            } else {
                out.data = Some(&t.data);
            }
            out
        })
        .collect();
    let json = ResponseJson {
        model_name: head.model_name,
        model_version: head.model_version,
        id: head.id,
        parameters: InstanceParameter {
            instance: head.instance,
        },
        outputs: outs,
    };
    let mut body = serde_json::to_vec(&json).expect("a response serializes");
    let header_length = any_binary.then_some(body.len());
    body.extend_from_slice(&raw);
    EncodedResponse {
        body,
        header_length,
    }
}

/// The non-negative integer parameter `key` of `owner`, when present.
fn parameter_usize(
    params: &Parameters,
    key: &str,
    owner: &str,
) -> Result<Option<usize>, TensorError> {
    params
        .get(key)
        .map(|v| {
            v.as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| {
                    TensorError(format!(
                        "{owner}: parameters.{key} is not a non-negative integer: {v}"
                    ))
                })
        })
        .transpose()
}

/// The boolean parameter `key` of `owner`, when present.
fn parameter_bool(
    params: &Parameters,
    key: &str,
    owner: &str,
) -> Result<Option<bool>, TensorError> {
    params
        .get(key)
        .map(|v| {
            v.as_bool().ok_or_else(|| {
                TensorError(format!("{owner}: parameters.{key} is not a boolean: {v}"))
            })
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const HEAD: ResponseHead<'static> = ResponseHead {
        model_name: "ranker",
        model_version: "2",
        id: Some("r1"),
        instance: "ranker-v2-a",
    };

    /// A body with `json` first and `raw` after it, and the header length to send with it.
    fn binary_body(json: &Value, raw: &[u8]) -> (Vec<u8>, usize) {
        let mut body = serde_json::to_vec(json).unwrap();
        let n = body.len();
        body.extend_from_slice(raw);
        (body, n)
    }

    #[test]
    fn a_json_request_is_decoded() {
        let body = json!({
            "id": "r1",
            "inputs": [{ "name": "INPUT0", "datatype": "INT64", "shape": [2, 2], "data": [[1, 2], [3, 4]] }],
            "outputs": [{ "name": "OUTPUT0", "parameters": { "binary_data": false } }],
        });
        let req = decode_request(&serde_json::to_vec(&body).unwrap(), None).unwrap();
        assert_eq!(req.id.as_deref(), Some("r1"));
        assert_eq!(req.inputs[0].shape, [2, 2]);
        assert_eq!(req.inputs[0].data, Elements::Int64(vec![1, 2, 3, 4]));
        assert_eq!(req.requested_names(), ["OUTPUT0"]);
        assert!(!req.wants_binary("OUTPUT0"));
    }

    #[test]
    fn a_binary_request_is_split_by_the_header_length_and_the_sizes() {
        let a = Elements::Fp32(vec![1.0, 2.0, 3.0]);
        let b = Elements::Int32(vec![7]);
        let mut raw = a.to_le_bytes();
        raw.extend(b.to_le_bytes());
        let (body, n) = binary_body(
            &json!({
                "inputs": [
                    { "name": "A", "datatype": "FP32", "shape": [3], "parameters": { "binary_data_size": 12 } },
                    { "name": "J", "datatype": "FP64", "shape": [1], "data": [0.5] },
                    { "name": "B", "datatype": "INT32", "shape": [1, 1], "parameters": { "binary_data_size": 4 } },
                ],
                "parameters": { "binary_data_output": true },
            }),
            &raw,
        );
        let req = decode_request(&body, Some(n)).unwrap();
        let data: Vec<_> = req.inputs.iter().map(|t| t.data.clone()).collect();
        assert_eq!(data, [a, Elements::Fp64(vec![0.5]), b]);
        assert_eq!(req.id, None);
        assert!(
            req.wants_binary("OUTPUT0"),
            "binary_data_output applies to every output"
        );
    }

    #[test]
    fn binary_data_that_does_not_add_up_is_refused() {
        let input = |size: usize| {
            json!({ "inputs": [{ "name": "INPUT0", "datatype": "FP32", "shape": [2],
                                 "parameters": { "binary_data_size": size } }] })
        };
        let (body, n) = binary_body(&input(8), &[0; 12]);
        let err = decode_request(&body, Some(n)).unwrap_err();
        assert_eq!(
            err.0,
            "4 bytes of binary data follow the inputs' binary_data_size"
        );
        let (body, n) = binary_body(&input(16), &[0; 8]);
        let err = decode_request(&body, Some(n)).unwrap_err();
        assert!(
            err.0
                .contains("binary_data_size 16 is more than the 8 bytes"),
            "{err}"
        );
        let (body, _) = binary_body(&input(8), &[]);
        let err = decode_request(&body, None).unwrap_err();
        assert!(
            err.0.contains("no inference-header-content-length header"),
            "{err}"
        );
        let err = decode_request(&body, Some(body.len() + 1)).unwrap_err();
        assert!(err.0.contains("longer than the body"), "{err}");
    }

    #[test]
    fn bad_requests_name_what_is_wrong() {
        let cases = [
            (json!({}), "missing field `inputs`"),
            (
                json!({ "inputs": [{ "name": "INPUT0", "datatype": "FP32", "shape": [1] }] }),
                "input INPUT0 has neither data nor parameters.binary_data_size",
            ),
            (
                json!({ "inputs": [{ "name": "INPUT0", "datatype": "BYTES", "shape": [1], "data": ["a"] }] }),
                "input INPUT0: unsupported datatype \"BYTES\"",
            ),
            (
                json!({ "inputs": [{ "name": "INPUT0", "datatype": "FP32", "shape": [3], "data": [1] }] }),
                "shape [3] holds 3 elements but 1 were given",
            ),
            (
                json!({ "inputs": [], "parameters": { "binary_data_output": "yes" } }),
                "parameters.binary_data_output is not a boolean",
            ),
        ];
        for (body, expected) in cases {
            let err = decode_request(&serde_json::to_vec(&body).unwrap(), None).unwrap_err();
            assert!(err.0.contains(expected), "{body}: {err}");
        }
        let err = decode_request(b"{not json", None).unwrap_err();
        assert!(
            err.0
                .starts_with("the request is not a valid inference request"),
            "{err}"
        );
    }

    #[test]
    fn a_json_response_names_model_version_and_instance() {
        let out =
            Tensor::new("OUTPUT0".into(), vec![1, 2], Elements::Fp32(vec![0.2, 4.0])).unwrap();
        let encoded = encode_response(&HEAD, &[out], |_| false);
        assert_eq!(encoded.header_length, None);
        let doc: Value = serde_json::from_slice(&encoded.body).unwrap();
        assert_eq!(
            doc,
            json!({
                "model_name": "ranker", "model_version": "2", "id": "r1",
                "parameters": { "instance": "ranker-v2-a" },
                "outputs": [{ "name": "OUTPUT0", "datatype": "FP32", "shape": [1, 2], "data": [0.2, 4.0] }],
            })
        );
        let text = String::from_utf8(encoded.body).unwrap();
        assert!(
            text.contains("[0.2,4.0]"),
            "FP32 written in its shortest form: {text}"
        );
    }

    #[test]
    fn a_binary_response_puts_the_raw_output_after_the_json() {
        let data = Elements::Int64(vec![2, -4]);
        let out = Tensor::new("OUTPUT0".into(), vec![2], data.clone()).unwrap();
        let head = ResponseHead { id: None, ..HEAD };
        let encoded = encode_response(&head, &[out], |_| true);
        let n = encoded.header_length.expect("a header length");
        let (json, raw) = encoded.body.split_at(n);
        let doc: Value = serde_json::from_slice(json).unwrap();
        assert_eq!(doc.get("id"), None);
        assert_eq!(
            doc["outputs"][0],
            json!({ "name": "OUTPUT0", "datatype": "INT64", "shape": [2],
                    "parameters": { "binary_data_size": 16 } })
        );
        assert_eq!(raw, data.to_le_bytes());
    }
}
