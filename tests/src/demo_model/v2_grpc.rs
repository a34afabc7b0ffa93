//! The Open Inference Protocol (V2) over gRPC: `inference.GRPCInferenceService` from
//! `tests/proto/inference.proto` (ServerLive, ServerReady, ModelReady, ServerMetadata,
//! ModelMetadata, ModelInfer).
//!
//! `ModelInfer` reads the inputs from `raw_input_contents` (little-endian bytes, one entry per
//! input) when the request has them, else from each input's typed `contents`, and answers the
//! same way: `raw_output_contents` for a raw request, typed `contents` otherwise. The response
//! names the model, its version and, in `parameters["instance"]`, the instance. An unknown
//! model is `NOT_FOUND`, a bad request `INVALID_ARGUMENT` naming what was wrong.

use std::collections::HashMap;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::model::{self, Catalog, PLATFORM, SIGNATURE};
use super::tensor::{DataType, Elements, Tensor, TensorError};
use super::{EXTENSIONS, SERVER_NAME, SERVER_VERSION};

/// The code generated from `tests/proto/inference.proto`.
#[allow(
    missing_docs,
    missing_debug_implementations,
    clippy::all,
    clippy::pedantic
)]
pub mod pb {
    tonic::include_proto!("inference");
}

use pb::grpc_inference_service_server::GrpcInferenceService;
use pb::infer_parameter::ParameterChoice;
use pb::model_infer_request::InferInputTensor;
use pb::model_infer_response::InferOutputTensor;
use pb::model_metadata_response::TensorMetadata;
use pb::{
    InferParameter, InferTensorContents, ModelInferRequest, ModelInferResponse,
    ModelMetadataRequest, ModelMetadataResponse, ModelReadyRequest, ModelReadyResponse,
    ServerLiveRequest, ServerLiveResponse, ServerMetadataRequest, ServerMetadataResponse,
    ServerReadyRequest, ServerReadyResponse,
};

pub use pb::grpc_inference_service_server::GrpcInferenceServiceServer;

/// The gRPC inference service of one demo server.
#[derive(Debug, Clone)]
pub struct InferenceService {
    catalog: Arc<Catalog>,
}

impl InferenceService {
    /// The service answering for `catalog`.
    pub fn new(catalog: Arc<Catalog>) -> Self {
        InferenceService { catalog }
    }
}

#[tonic::async_trait]
impl GrpcInferenceService for InferenceService {
    async fn server_live(
        &self,
        _: Request<ServerLiveRequest>,
    ) -> Result<Response<ServerLiveResponse>, Status> {
        Ok(Response::new(ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<ServerReadyRequest>,
    ) -> Result<Response<ServerReadyResponse>, Status> {
        Ok(Response::new(ServerReadyResponse { ready: true }))
    }

    async fn model_ready(
        &self,
        req: Request<ModelReadyRequest>,
    ) -> Result<Response<ModelReadyResponse>, Status> {
        let req = req.into_inner();
        let ready = self.catalog.find(&req.name, Some(&req.version)).is_ok();
        Ok(Response::new(ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: Request<ServerMetadataRequest>,
    ) -> Result<Response<ServerMetadataResponse>, Status> {
        Ok(Response::new(ServerMetadataResponse {
            name: SERVER_NAME.to_owned(),
            version: SERVER_VERSION.to_owned(),
            extensions: EXTENSIONS.iter().map(|&e| e.to_owned()).collect(),
        }))
    }

    async fn model_metadata(
        &self,
        req: Request<ModelMetadataRequest>,
    ) -> Result<Response<ModelMetadataResponse>, Status> {
        let req = req.into_inner();
        let spec = self
            .catalog
            .find(&req.name, Some(&req.version))
            .map_err(|e| Status::not_found(e.0))?;
        let versions = if req.version.is_empty() {
            self.catalog.versions(&spec.name)
        } else {
            vec![spec.version.clone()]
        };
        let tensor = |i: usize| TensorMetadata {
            name: SIGNATURE[i].name.to_owned(),
            datatype: SIGNATURE[i].datatype.name().to_owned(),
            shape: SIGNATURE[i].shape.to_vec(),
        };
        Ok(Response::new(ModelMetadataResponse {
            name: spec.name.clone(),
            versions,
            platform: PLATFORM.to_owned(),
            inputs: vec![tensor(0)],
            outputs: vec![tensor(1)],
        }))
    }

    async fn model_infer(
        &self,
        req: Request<ModelInferRequest>,
    ) -> Result<Response<ModelInferResponse>, Status> {
        let req = req.into_inner();
        let spec = self
            .catalog
            .find(&req.model_name, Some(&req.model_version))
            .map_err(|e| Status::not_found(e.0))?;
        let raw = !req.raw_input_contents.is_empty();
        let requested: Vec<String> = req.outputs.iter().map(|o| o.name.clone()).collect();
        let inputs = decode_inputs(req.inputs, req.raw_input_contents)
            .map_err(|e| Status::invalid_argument(e.0))?;
        let outputs =
            model::infer(&inputs, &requested).map_err(|e| Status::invalid_argument(e.0))?;

        let mut response = ModelInferResponse {
            model_name: spec.name.clone(),
            model_version: spec.version.clone(),
            id: req.id,
            parameters: HashMap::from([(
                "instance".to_owned(),
                InferParameter {
                    parameter_choice: Some(ParameterChoice::StringParam(
                        self.catalog.instance.clone(),
                    )),
                },
            )]),
            ..ModelInferResponse::default()
        };
        for t in outputs {
            let datatype = t.datatype().name().to_owned();
            let contents = if raw {
                response.raw_output_contents.push(t.data.to_le_bytes());
                None
            } else {
                Some(contents_of(t.data))
            };
            response.outputs.push(InferOutputTensor {
                name: t.name,
                datatype,
                shape: t.shape,
                parameters: HashMap::new(),
                contents,
            });
        }
        Ok(Response::new(response))
    }
}

/// The input tensors of a request, from `raw` (its `raw_input_contents`) when it has them,
/// else from each input's typed `contents`.
fn decode_inputs(
    inputs: Vec<InferInputTensor>,
    raw: Vec<Vec<u8>>,
) -> Result<Vec<Tensor>, TensorError> {
    if !raw.is_empty() && raw.len() != inputs.len() {
        return Err(TensorError(format!(
            "{} inputs but {} raw_input_contents entries: give one per input, or none",
            inputs.len(),
            raw.len()
        )));
    }
    let mut raw = raw.into_iter();
    inputs
        .into_iter()
        .map(|input| {
            let datatype = DataType::parse(&input.datatype)
                .map_err(|e| TensorError(format!("input {}: {e}", input.name)))?;
            let data = match raw.next() {
                Some(bytes) => Elements::from_le_bytes(&input.name, datatype, &bytes)?,
                None => elements_of(datatype, input.contents.unwrap_or_default()),
            };
            Tensor::new(input.name, input.shape, data)
        })
        .collect()
}

/// The elements of typed `contents` for `datatype`.
fn elements_of(datatype: DataType, contents: InferTensorContents) -> Elements {
    match datatype {
        DataType::Fp32 => Elements::Fp32(contents.fp32_contents),
        DataType::Fp64 => Elements::Fp64(contents.fp64_contents),
        DataType::Int32 => Elements::Int32(contents.int_contents),
        DataType::Int64 => Elements::Int64(contents.int64_contents),
    }
}

/// Typed contents holding `data`.
fn contents_of(data: Elements) -> InferTensorContents {
    let mut c = InferTensorContents::default();
    match data {
        Elements::Fp32(v) => c.fp32_contents = v,
        Elements::Fp64(v) => c.fp64_contents = v,
        Elements::Int32(v) => c.int_contents = v,
        Elements::Int64(v) => c.int64_contents = v,
    }
    c
}
