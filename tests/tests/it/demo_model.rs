//! The `demo-model` binary: Open Inference Protocol REST (JSON and binary tensors) and gRPC,
//! gRPC health, OpenAI-compatible completions with SSE framing, and the instance naming on
//! every answer; directly and through a router with an `auto` cluster (REST over HTTP/1.1,
//! gRPC over h2c).

use std::net::SocketAddr;
use std::process::{Command, Stdio};

use bytes::Bytes;
use http::{Method, StatusCode, Version};
use http_body_util::BodyExt as _;
use integration_tests::client::{self, ROUTING_KEY};
use integration_tests::demo_model::INSTANCE_HEADER;
use integration_tests::demo_model::tensor::Elements;
use integration_tests::demo_model::v2_grpc::pb::grpc_inference_service_client::GrpcInferenceServiceClient;
use integration_tests::demo_model::v2_grpc::pb::infer_parameter::ParameterChoice;
use integration_tests::demo_model::v2_grpc::pb::model_infer_request::InferInputTensor;
use integration_tests::demo_model::v2_grpc::pb::{
    InferTensorContents, ModelInferRequest, ModelInferResponse, ModelMetadataRequest,
    ServerMetadataRequest,
};
use integration_tests::process::{ServiceProcess, workspace_bin};
use integration_tests::{Collected, DEADLINE, HttpClient, RouterProcess, trace_init, within};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// A running `demo-model`; dropping it kills the process.
struct Demo {
    addr: SocketAddr,
    _process: ServiceProcess,
}

/// Starts `demo-model --listen 127.0.0.1:0 ARGS..` and waits for its listening line
/// (`demo-model ... listening on ADDR`).
async fn start(args: &[&str]) -> Demo {
    let mut cmd = Command::new(workspace_bin("demo-model", "DEMO_MODEL_BIN"));
    cmd.args(["--listen", "127.0.0.1:0"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let (mut process, mut lines) = ServiceProcess::spawn("demo-model", "the demo model", cmd);
    let addr = process
        .wait_for_listening(&mut lines, "demo-model ... listening on ADDR", |line| {
            let rest = line.strip_prefix("demo-model ")?;
            rest.contains(" listening on ")
                .then(|| rest.rsplit(' ').next()?.parse().ok())
                .flatten()
        })
        .await;
    Demo {
        addr,
        _process: process,
    }
}

/// Instance `ranker-a` serving `ranker` versions 1 and 2, streaming without delay.
async fn ranker() -> Demo {
    start(&[
        "--instance",
        "ranker-a",
        "--model",
        "ranker:1",
        "--model",
        "ranker:2",
        "--token-delay-ms",
        "0",
    ])
    .await
}

async fn get(client: &HttpClient, addr: SocketAddr, path: &str) -> Collected {
    client.get(addr, path, None).await
}

async fn post(
    client: &HttpClient,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
) -> Collected {
    let mut req = client::request(Method::POST, addr, path);
    for (name, value) in headers {
        req = req.header(*name, value);
    }
    client
        .fetch(req.body(client::full(body)).expect("a valid request"))
        .await
}

async fn post_json(client: &HttpClient, addr: SocketAddr, path: &str, body: &Value) -> Collected {
    post(
        client,
        addr,
        path,
        &[],
        serde_json::to_vec(body).expect("JSON"),
    )
    .await
}

/// Asserts the status, the instance header and a JSON body, and returns the body.
fn json_of(resp: &Collected, status: StatusCode, instance: &str) -> Value {
    assert_eq!(
        resp.status,
        status,
        "body: {}",
        String::from_utf8_lossy(&resp.body)
    );
    assert_eq!(resp.header(INSTANCE_HEADER).as_deref(), Some(instance));
    resp.json()
}

#[tokio::test]
async fn rest_metadata_health_and_readiness_name_the_server_and_its_models() {
    let _trace = trace_init();
    let demo = ranker().await;
    for client in [HttpClient::http1(), HttpClient::h2c()] {
        let server = json_of(
            &get(&client, demo.addr, "/v2").await,
            StatusCode::OK,
            "ranker-a",
        );
        assert_eq!(server["name"], "demo-model");
        assert!(
            server["extensions"]
                .as_array()
                .unwrap()
                .contains(&json!("binary_tensor_data")),
            "{server}"
        );
        for path in [
            "/v2/health/live",
            "/v2/health/ready",
            "/v2/models/ranker/ready",
            "/v2/models/ranker/versions/1/ready",
        ] {
            json_of(
                &get(&client, demo.addr, path).await,
                StatusCode::OK,
                "ranker-a",
            );
        }
        let meta = json_of(
            &get(&client, demo.addr, "/v2/models/ranker").await,
            StatusCode::OK,
            "ranker-a",
        );
        assert_eq!(meta["name"], "ranker");
        assert_eq!(meta["versions"], json!(["1", "2"]));
        assert_eq!(meta["inputs"][0]["name"], "INPUT0");
        assert_eq!(
            meta["outputs"][0],
            json!({ "name": "OUTPUT0", "datatype": "FP32", "shape": [-1] })
        );
        let meta = json_of(
            &get(&client, demo.addr, "/v2/models/ranker/versions/2").await,
            StatusCode::OK,
            "ranker-a",
        );
        assert_eq!(meta["versions"], json!(["2"]));

        for path in [
            "/v2/models/ranker/versions/3/ready",
            "/v2/models/nope",
            "/v2/models/nope/ready",
        ] {
            let err = json_of(
                &get(&client, demo.addr, path).await,
                StatusCode::NOT_FOUND,
                "ranker-a",
            );
            assert!(
                err["error"]
                    .as_str()
                    .unwrap()
                    .contains("is not served by instance \"ranker-a\""),
                "{path}: {err}"
            );
        }
    }
}

#[tokio::test]
async fn rest_infer_with_json_tensors_doubles_the_input() {
    let _trace = trace_init();
    let demo = ranker().await;
    let client = HttpClient::http1();
    let request = json!({
        "id": "req-7",
        "inputs": [{ "name": "INPUT0", "datatype": "INT32", "shape": [2, 2], "data": [[1, 2], [3, -4]] }],
    });
    let resp = post_json(
        &client,
        demo.addr,
        "/v2/models/ranker/versions/1/infer",
        &request,
    )
    .await;
    let doc = json_of(&resp, StatusCode::OK, "ranker-a");
    assert_eq!(
        resp.header("content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(
        doc,
        json!({
            "model_name": "ranker", "model_version": "1", "id": "req-7",
            "parameters": { "instance": "ranker-a" },
            "outputs": [{ "name": "OUTPUT0", "datatype": "INT32", "shape": [2, 2], "data": [2, 4, 6, -8] }],
        })
    );
    // Without a version: the latest.
    let doc = json_of(
        &post_json(&client, demo.addr, "/v2/models/ranker/infer", &request).await,
        StatusCode::OK,
        "ranker-a",
    );
    assert_eq!(doc["model_version"], "2");
}

#[tokio::test]
async fn rest_infer_errors_name_what_was_wrong() {
    let _trace = trace_init();
    let demo = ranker().await;
    let client = HttpClient::http1();
    let input = |datatype: &str, shape: Value, data: Value| json!({ "inputs": [{ "name": "INPUT0", "datatype": datatype, "shape": shape, "data": data }] });
    let cases = [
        (
            input("FP32", json!([3]), json!([1, 2])),
            "shape [3] holds 3 elements but 2 were given",
        ),
        (
            input("BYTES", json!([1]), json!(["a"])),
            "unsupported datatype \"BYTES\"",
        ),
        (
            input("INT64", json!([1]), json!([0.5])),
            "element 0 is not INT64",
        ),
        (json!({ "inputs": [] }), "input INPUT0 is missing"),
        (json!({ "input": [] }), "missing field `inputs`"),
    ];
    for (body, expected) in cases {
        let resp = post_json(&client, demo.addr, "/v2/models/ranker/infer", &body).await;
        let err = json_of(&resp, StatusCode::BAD_REQUEST, "ranker-a");
        assert!(
            err["error"].as_str().unwrap().contains(expected),
            "{body}: {err}"
        );
    }
    let resp = post_json(
        &client,
        demo.addr,
        "/v2/models/nope/infer",
        &input("FP32", json!([1]), json!([1])),
    )
    .await;
    json_of(&resp, StatusCode::NOT_FOUND, "ranker-a");
    let resp = get(&client, demo.addr, "/v2/models/ranker/infer").await;
    json_of(&resp, StatusCode::METHOD_NOT_ALLOWED, "ranker-a");
}

#[tokio::test]
async fn rest_infer_with_binary_tensors_answers_binary_outputs() {
    let _trace = trace_init();
    let demo = ranker().await;
    let input = Elements::Fp32(vec![0.5, -1.0, 3.25]);
    let raw = input.to_le_bytes();
    let header = json!({
        "inputs": [{ "name": "INPUT0", "datatype": "FP32", "shape": [1, 3],
                     "parameters": { "binary_data_size": raw.len() } }],
        "outputs": [{ "name": "OUTPUT0", "parameters": { "binary_data": true } }],
    });
    let mut body = serde_json::to_vec(&header).unwrap();
    let header_length = body.len();
    body.extend_from_slice(&raw);
    for client in [HttpClient::http1(), HttpClient::h2c()] {
        let headers = [("inference-header-content-length", header_length.to_string())];
        let resp = post(
            &client,
            demo.addr,
            "/v2/models/ranker/infer",
            &headers,
            body.clone(),
        )
        .await;
        assert_eq!(resp.status, StatusCode::OK, "{:?}", resp.body);
        assert_eq!(resp.header(INSTANCE_HEADER).as_deref(), Some("ranker-a"));
        assert_eq!(
            resp.header("content-type").as_deref(),
            Some("application/octet-stream")
        );
        let n: usize = resp
            .header("inference-header-content-length")
            .expect("a header length")
            .parse()
            .unwrap();
        let (json, rest) = resp.body.split_at(n);
        let doc: Value = serde_json::from_slice(json).unwrap();
        assert_eq!(doc["parameters"]["instance"], "ranker-a");
        assert_eq!(
            doc["outputs"][0],
            json!({ "name": "OUTPUT0", "datatype": "FP32", "shape": [1, 3], "parameters": { "binary_data_size": 12 } })
        );
        assert_eq!(rest, Elements::Fp32(vec![1.0, -2.0, 6.5]).to_le_bytes());
    }
}

async fn grpc_client(addr: SocketAddr) -> Channel {
    within(
        "connecting a tonic client",
        DEADLINE,
        Channel::from_shared(format!("http://{addr}"))
            .expect("a URI")
            .connect(),
    )
    .await
    .expect("connect over h2c")
}

fn infer_request(
    version: &str,
    contents: Option<InferTensorContents>,
    raw: Vec<Vec<u8>>,
) -> ModelInferRequest {
    ModelInferRequest {
        model_name: "ranker".into(),
        model_version: version.into(),
        id: "g1".into(),
        inputs: vec![InferInputTensor {
            name: "INPUT0".into(),
            datatype: "INT64".into(),
            shape: vec![3],
            contents,
            ..InferInputTensor::default()
        }],
        raw_input_contents: raw,
        ..ModelInferRequest::default()
    }
}

fn instance_of(resp: &ModelInferResponse) -> Option<&str> {
    match resp.parameters.get("instance")?.parameter_choice.as_ref()? {
        ParameterChoice::StringParam(s) => Some(s),
        _ => None,
    }
}

/// `request` with `x-routing-key: key` when given.
fn keyed<T>(message: T, key: Option<&str>) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    if let Some(key) = key {
        req.metadata_mut().insert(ROUTING_KEY, key.parse().unwrap());
    }
    req
}

/// ModelInfer with raw and with typed contents, metadata and health, over `channel`.
async fn check_grpc(channel: Channel, key: Option<&str>, instance: &str) {
    let mut client = GrpcInferenceServiceClient::new(channel.clone());
    let raw = Elements::Int64(vec![1, -2, 3]).to_le_bytes();
    let resp = within(
        "ModelInfer (raw)",
        DEADLINE,
        client.model_infer(keyed(infer_request("1", None, vec![raw]), key)),
    )
    .await
    .expect("ModelInfer with raw_input_contents");
    assert_eq!(
        resp.metadata()
            .get(INSTANCE_HEADER)
            .map(|v| v.to_str().unwrap()),
        Some(instance)
    );
    let resp = resp.into_inner();
    assert_eq!(
        (
            resp.model_name.as_str(),
            resp.model_version.as_str(),
            resp.id.as_str()
        ),
        ("ranker", "1", "g1")
    );
    assert_eq!(instance_of(&resp), Some(instance));
    assert_eq!(resp.outputs[0].name, "OUTPUT0");
    assert_eq!(resp.outputs[0].datatype, "INT64");
    assert_eq!(resp.outputs[0].shape, [3]);
    assert_eq!(resp.outputs[0].contents, None);
    assert_eq!(
        resp.raw_output_contents,
        [Elements::Int64(vec![2, -4, 6]).to_le_bytes()]
    );

    let contents = InferTensorContents {
        int64_contents: vec![5, 6, 7],
        ..InferTensorContents::default()
    };
    let resp = within(
        "ModelInfer (typed)",
        DEADLINE,
        client.model_infer(keyed(infer_request("", Some(contents), vec![]), key)),
    )
    .await
    .expect("ModelInfer with typed contents")
    .into_inner();
    assert_eq!(resp.model_version, "2", "no version: the latest");
    assert!(resp.raw_output_contents.is_empty());
    assert_eq!(
        resp.outputs[0].contents.as_ref().unwrap().int64_contents,
        [10, 12, 14]
    );

    let status = client
        .model_infer(keyed(
            ModelInferRequest {
                model_name: "nope".into(),
                ..ModelInferRequest::default()
            },
            key,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    let status = client
        .model_infer(keyed(infer_request("1", None, vec![vec![0; 5]]), key))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("5 bytes"), "{status:?}");

    let meta = client
        .model_metadata(keyed(
            ModelMetadataRequest {
                name: "ranker".into(),
                version: String::new(),
            },
            key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(meta.versions, ["1", "2"]);
    let server = client
        .server_metadata(keyed(ServerMetadataRequest {}, key))
        .await
        .unwrap()
        .into_inner();
    assert!(server.extensions.contains(&"binary_tensor_data".to_owned()));

    let mut health = HealthClient::new(channel);
    let check = health
        .check(keyed(
            HealthCheckRequest {
                service: String::new(),
            },
            key,
        ))
        .await
        .expect("grpc.health.v1.Health/Check")
        .into_inner();
    assert_eq!(check.status(), ServingStatus::Serving);
}

#[tokio::test]
async fn grpc_model_infer_answers_raw_or_typed_like_the_request() {
    let _trace = trace_init();
    let demo = ranker().await;
    check_grpc(grpc_client(demo.addr).await, None, "ranker-a").await;
}

/// The events of an SSE body, checking the framing: every event is one `data: ` line ended
/// by a blank line.
async fn sse_events(resp: http::Response<hyper::body::Incoming>) -> Vec<String> {
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    assert_eq!(resp.headers()[INSTANCE_HEADER], "ranker-a");
    let body: Bytes = within("the SSE body", DEADLINE, resp.into_body().collect())
        .await
        .expect("the SSE body")
        .to_bytes();
    let text = String::from_utf8(body.to_vec()).expect("UTF-8 events");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    text.split_terminator("\n\n")
        .map(|event| {
            assert!(!event.contains('\n'), "one line per event: {event:?}");
            event
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("a data line: {event:?}"))
                .to_owned()
        })
        .collect()
}

async fn stream_request(
    client: &HttpClient,
    addr: SocketAddr,
    path: &str,
    body: &Value,
) -> http::Response<hyper::body::Incoming> {
    let req = client::request(Method::POST, addr, path)
        .header("content-type", "application/json")
        .body(client::full(serde_json::to_vec(body).unwrap()))
        .unwrap();
    within("the stream's head", DEADLINE, client.send(req))
        .await
        .expect("a streamed completion")
}

#[tokio::test]
async fn streamed_completions_are_framed_as_server_sent_events() {
    let _trace = trace_init();
    let demo = ranker().await;
    let expected = "model ranker version 2 on instance ranker-a: hello";
    for version in [Version::HTTP_11, Version::HTTP_2] {
        let client = HttpClient::for_version(version);
        let chat = json!({ "model": "ranker", "stream": true, "messages": [{ "role": "user", "content": "hi" }] });
        let events =
            sse_events(stream_request(&client, demo.addr, "/v1/chat/completions", &chat).await)
                .await;
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
        let chunks: Vec<Value> = events[..events.len() - 1]
            .iter()
            .map(|e| serde_json::from_str(e).unwrap())
            .collect();
        assert!(chunks.len() > 3, "{chunks:?}");
        assert!(
            chunks
                .iter()
                .all(|c| c["object"] == "chat.completion.chunk" && c["model"] == "ranker")
        );
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        let text: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(text, expected);
        assert_eq!(
            chunks.last().unwrap()["choices"][0]["finish_reason"],
            "stop"
        );
        assert!(
            chunks[..chunks.len() - 1]
                .iter()
                .all(|c| c["choices"][0]["finish_reason"].is_null())
        );

        let completion = json!({ "model": "ranker", "stream": true, "prompt": "hi" });
        let events =
            sse_events(stream_request(&client, demo.addr, "/v1/completions", &completion).await)
                .await;
        let chunks: Vec<Value> = events[..events.len() - 1]
            .iter()
            .map(|e| serde_json::from_str(e).unwrap())
            .collect();
        assert!(chunks.iter().all(|c| c["object"] == "text_completion"));
        let text: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["text"].as_str())
            .collect();
        assert_eq!(text, expected);
        assert_eq!(
            chunks.last().unwrap()["choices"][0]["finish_reason"],
            "stop"
        );
    }
}

#[tokio::test]
async fn whole_completions_and_the_model_list_name_the_instance() {
    let _trace = trace_init();
    let demo = ranker().await;
    let client = HttpClient::http1();
    let chat =
        json!({ "model": "ranker", "messages": [{ "role": "user", "content": "hello there" }] });
    let doc = json_of(
        &post_json(&client, demo.addr, "/v1/chat/completions", &chat).await,
        StatusCode::OK,
        "ranker-a",
    );
    assert_eq!(doc["object"], "chat.completion");
    assert_eq!(doc["model"], "ranker");
    assert_eq!(
        doc["choices"][0]["message"]["content"],
        "model ranker version 2 on instance ranker-a: hello"
    );
    assert_eq!(
        doc["usage"],
        json!({ "prompt_tokens": 2, "completion_tokens": 8, "total_tokens": 10 })
    );

    let text = json!({ "model": "ranker", "prompt": "hi", "max_tokens": 3 });
    let doc = json_of(
        &post_json(&client, demo.addr, "/v1/completions", &text).await,
        StatusCode::OK,
        "ranker-a",
    );
    assert_eq!(doc["object"], "text_completion");
    assert_eq!(doc["choices"][0]["text"], "model ranker version");
    assert_eq!(doc["choices"][0]["finish_reason"], "length");

    let models = json_of(
        &get(&client, demo.addr, "/v1/models").await,
        StatusCode::OK,
        "ranker-a",
    );
    assert_eq!(models["data"][0]["id"], "ranker");
    assert_eq!(models["data"].as_array().unwrap().len(), 1);

    let unknown = json!({ "model": "nope", "prompt": "hi" });
    let err = json_of(
        &post_json(&client, demo.addr, "/v1/completions", &unknown).await,
        StatusCode::NOT_FOUND,
        "ranker-a",
    );
    assert_eq!(err["error"]["code"], "model_not_found");
    let err = json_of(
        &post_json(
            &client,
            demo.addr,
            "/v1/chat/completions",
            &json!({ "model": "ranker" }),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "ranker-a",
    );
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("messages"),
        "{err}"
    );
}

#[tokio::test]
async fn rest_and_grpc_reach_the_demo_model_through_an_auto_cluster() {
    let _trace = trace_init();
    let demo = ranker().await;
    let router = RouterProcess::start(&json!({
        "clusters": { "ranker": { "endpoints": [demo.addr.to_string()], "protocol": "auto" } },
        "routes": { "ranker": { "cluster": "ranker" } },
    }))
    .await;
    let request = json!({ "inputs": [{ "name": "INPUT0", "datatype": "FP64", "shape": [1], "data": [1.5] }] });
    for client in [HttpClient::http1(), HttpClient::h2c()] {
        let req = client::request(Method::POST, router.proxy_addr, "/v2/models/ranker/infer")
            .header(ROUTING_KEY, "ranker")
            .body(client::full(serde_json::to_vec(&request).unwrap()))
            .unwrap();
        let doc = json_of(&client.fetch(req).await, StatusCode::OK, "ranker-a");
        assert_eq!(doc["outputs"][0]["data"], json!([3.0]));
    }
    check_grpc(
        grpc_client(router.proxy_addr).await,
        Some("ranker"),
        "ranker-a",
    )
    .await;
}

#[tokio::test]
async fn a_server_pacing_by_time_refuses_steps_and_a_stepped_one_waits_for_them() {
    let _trace = trace_init();
    let client = HttpClient::http1();
    let timed = ranker().await;
    let refused = post(&client, timed.addr, "/demo/step", &[], Vec::new()).await;
    assert_eq!(refused.status, StatusCode::CONFLICT, "{:?}", refused.body);

    let stepped = start(&["--instance", "s", "--model", "ranker:1", "--stepped-tokens"]).await;
    // One stream read event by event over a plain connection: after each event, nothing more
    // comes until a step is released (the next event is read only after the release).
    let body = br#"{"model": "ranker", "prompt": "x", "stream": true}"#;
    let mut conn = tokio::net::TcpStream::connect(stepped.addr)
        .await
        .expect("connects");
    let head = format!(
        "POST /v1/completions HTTP/1.1\r\nhost: s\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await.expect("writes");
    conn.write_all(body).await.expect("writes");
    let mut seen = Vec::new();
    let mut events = 0;
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("data: [DONE]") {
        let n = conn.read(&mut buf).await.expect("reads");
        assert!(
            n > 0,
            "the stream ended early: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
        let now = String::from_utf8_lossy(&seen).matches("data: {").count();
        // A new event came: release the next one.
        for _ in events..now {
            let step = post(&client, stepped.addr, "/demo/step", &[], Vec::new()).await;
            assert_eq!(step.status, StatusCode::NO_CONTENT);
        }
        events = now;
        assert!(events < 100, "a bounded stream");
    }
    assert!(events > 2, "{events} events");
}
