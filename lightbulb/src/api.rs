//! The config API (with `--store`), on the HTTP port: read, replace, edit, validate, roll
//! back the rule set, each accepted change a new version in the [`Store`].
//!
//! | method and path | what | auth |
//! |---|---|---|
//! | `GET /v1/config` | the current rule set, `ETag: "N"` | no |
//! | `PUT /v1/config` | replace it; `If-Match: "N"` required | yes |
//! | `POST /v1/config/validate` | dry run: `{"valid": true, "warnings": [..]}` or 400 | no |
//! | `PUT`/`DELETE /v1/{clusters,routes,models,experiments,objectives}/{name}` | edit one entry; `If-Match` optional | yes |
//! | `GET /v1/config/history` | the versions kept, newest first | no |
//! | `GET /v1/config/versions/{n}` | one kept version's rule set | no |
//! | `POST /v1/config/rollback` `{"version": N}` | store version N's rules as a new version | yes |
//!
//! A change, in order: bearer token (401), `If-Match` present where required (428) and
//! well-formed (400; `"N"`, `W/"N"`, a bare `N`, or `*` for any version), `Content-Type: application/json` (415), body within
//! `--max-body-bytes` (413), body parses (400 `invalid_json`, naming the field, line and
//! column); then, under the one write lock: `If-Match` is the current version (409 with
//! `current_version`), the whole new rule set validates (400 `invalid_config` with every
//! problem), it is stored as the next version, and put in force through
//! [`Reloader::apply_if_newer`] (engine, cache, `RoutingConfig.Watch`; newer only, because
//! with the shared etcd store [`ConfigApi::follow`] puts versions written through any replica
//! in force too). The answer is
//! `{"version": N, "warnings": [..]}` with `ETag: "N"`, and the change is logged with who made
//! it and a diff summary.
//!
//! Errors are `{"error": {"code", "message", "problems"?: [{"path", "message"}],
//! "current_version"?}}`.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use http_body_util::BodyExt as _;
use models_config::spec::{
    ClusterSpec, ExperimentSpec, ModelSpec, ObjectiveSpec, RouteSpec, RuleSet,
};
use models_config::unique_map::UniqueMap;
use models_config::{ConfigError, Issue, ValidRuleSet};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::auth::Tokens;
use crate::reload::Reloader;
use crate::store::{Snapshot, Store, StoreError};

/// Who may change the rules.
#[derive(Debug, Clone)]
pub enum Auth {
    /// A bearer token from this set.
    Tokens(Tokens),
    /// Anyone (`--insecure-no-auth`, loopback only); changes are made by `anonymous`.
    Disabled,
}

/// The config API's state: the store, what applies accepted rule sets, who may write.
#[derive(Debug)]
pub struct ConfigApi {
    store: Arc<dyn Store>,
    reloader: Mutex<Option<Reloader>>,
    write: tokio::sync::Mutex<()>,
    auth: Auth,
    max_body_bytes: usize,
}

/// A failed API call, rendered as `{"error": {..}}`.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    problems: Option<Vec<Issue>>,
    current_version: Option<u64>,
}

/// A part of the rule set edited by the granular endpoints.
trait Part: DeserializeOwned + Send + 'static {
    /// The rule set's field: `clusters`.
    const FIELD: &'static str;
    fn map(rules: &mut RuleSet) -> &mut UniqueMap<Self>;
}

macro_rules! part {
    ($t:ty, $field:ident) => {
        impl Part for $t {
            const FIELD: &'static str = stringify!($field);
            fn map(rules: &mut RuleSet) -> &mut UniqueMap<Self> {
                &mut rules.$field
            }
        }
    };
}

part!(ClusterSpec, clusters);
part!(RouteSpec, routes);
part!(ModelSpec, models);
part!(ExperimentSpec, experiments);
part!(ObjectiveSpec, objectives);

/// Whether a change needs `If-Match`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IfMatch {
    Required,
    Optional,
}

/// The body of `POST /v1/config/rollback`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackBody {
    version: u64,
}

// === impl ConfigApi ===

impl ConfigApi {
    /// The API over `store`, applying accepted rule sets through `reloader`.
    pub fn new(
        store: Arc<dyn Store>,
        reloader: Reloader,
        auth: Auth,
        max_body_bytes: usize,
    ) -> Self {
        Self {
            store,
            reloader: Mutex::new(Some(reloader)),
            write: tokio::sync::Mutex::new(()),
            auth,
            max_body_bytes,
        }
    }

    /// Drops the reloader, which ends every `RoutingConfig.Watch` stream; later changes are
    /// refused with 503. Called when draining starts.
    pub fn close(&self) {
        drop(
            self.reloader
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
    }

    /// The name of the caller's token.
    fn authorize(&self, headers: &HeaderMap) -> Result<String, ApiError> {
        let tokens = match &self.auth {
            Auth::Disabled => return Ok("anonymous".to_owned()),
            Auth::Tokens(tokens) => tokens,
        };
        // The header's value is never logged nor echoed: the answer only says whether
        // there was a bearer token and whether it is one of ours.
        let authorization = headers
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes);
        let presented = service_runtime::secret::bearer(authorization)
            .filter(|token| !token.is_empty())
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "a bearer token is required: Authorization: Bearer TOKEN",
                )
            })?;
        tokens.check(presented).map(str::to_owned).ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "the bearer token is not valid",
            )
        })
    }

    /// Checks the content type and reads the body, up to the limit.
    async fn json_body(&self, request: Request) -> Result<Bytes, ApiError> {
        let (parts, body) = request.into_parts();
        let json = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
        if !json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "the body must be JSON: Content-Type: application/json",
            ));
        }
        let too_large = || {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the body is larger than {} bytes", self.max_body_bytes),
            )
        };
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max_body_bytes as u64) {
            return Err(too_large());
        }
        match http_body_util::Limited::new(body, self.max_body_bytes)
            .collect()
            .await
        {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
            Err(e) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                format!("cannot read the body: {e}"),
            )),
        }
    }

    /// The shared path of every change: auth, preconditions, body, then (under the write
    /// lock) version check, `edit`, validation, store, apply.
    /// `edit` returns the new rule set and a description of the change for the log.
    async fn change(
        &self,
        request: Request,
        if_match: IfMatch,
        with_body: bool,
        edit: impl FnOnce(&Bytes, &RuleSet) -> Result<(ValidRuleSet, String), ApiError>,
    ) -> Response {
        let outcome = async {
            let who = self.authorize(request.headers())?;
            let expected = parse_if_match(request.headers())?;
            if expected.is_none() && if_match == IfMatch::Required {
                return Err(ApiError::new(
                    StatusCode::PRECONDITION_REQUIRED,
                    "precondition_required",
                    "If-Match with the current version (the ETag of GET /v1/config) is required",
                ));
            }
            let body = if with_body {
                self.json_body(request).await?
            } else {
                Bytes::new()
            };
            let _write = self.write.lock().await;
            let current = self.store.current();
            let current_version = current.info.version;
            if let Some(Some(expected)) = expected
                && expected != current_version
            {
                return Err(conflict(expected, current_version));
            }
            let (next, action) = edit(&body, &current.rules)?;
            let warnings = next.warnings().to_vec();
            if self
                .reloader
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_none()
            {
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "shutting down",
                ));
            }
            let store = Arc::clone(&self.store);
            let stored = tokio::task::spawn_blocking({
                let who = who.clone();
                move || store.put(current_version, next, &who)
            })
            .await
            .map_err(|e| internal(format!("the store write failed: {e}")))?
            .map_err(|e| match e {
                StoreError::Conflict { expected, current } => conflict(expected, current),
                e => {
                    tracing::error!(error = %e, "cannot store the rule set");
                    internal(format!("cannot store the rule set: {e}"))
                }
            })?;
            self.apply(&stored, &current, &who, &action)?;
            Ok((stored.info.version, warnings))
        }
        .await;
        match outcome {
            Ok((version, warnings)) => (
                [(header::ETAG, etag(version))],
                axum::Json(json!({ "version": version, "warnings": warnings })),
            )
                .into_response(),
            Err(e) => e.into_response(),
        }
    }

    /// Puts a stored version in force and logs it.
    fn apply(
        &self,
        stored: &Snapshot,
        previous: &Snapshot,
        who: &str,
        action: &str,
    ) -> Result<(), ApiError> {
        let reloader = self.reloader.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(reloader) = reloader.as_ref() else {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "stored, but shutting down: it will be in force after the restart",
            ));
        };
        // Newer only: with a shared store, this replica's watch may have put this version,
        // or a later one written elsewhere, in force already.
        let diff = Diff::new(&previous.rules, &stored.rules);
        match reloader.apply_if_newer(stored.rules.clone()) {
            Some(version) => {
                crate::metrics::record_reload(true);
                tracing::info!(version, who, action, %diff, "rule set changed");
            }
            None => {
                tracing::info!(version = stored.info.version, who, action, %diff, "rule set changed (already in force)");
            }
        }
        Ok(())
    }
}

impl ConfigApi {
    /// Puts a version that became current in a shared store (written by any replica) in
    /// force, unless a version as new is already; ignored once closed.
    pub fn follow(&self, snapshot: &Snapshot) {
        let reloader = self.reloader.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(reloader) = reloader.as_ref() else {
            return;
        };
        let version = snapshot.info.version;
        if reloader.apply_if_newer(snapshot.rules.clone()).is_some() {
            crate::metrics::record_reload(true);
            tracing::info!(version, who = %snapshot.info.who, "rule set changed in the store");
        }
    }
}

// === handlers ===

/// The config API's routes.
pub fn router(api: Arc<ConfigApi>) -> Router {
    Router::new()
        .route("/v1/config", get(get_config).put(put_config))
        .route("/v1/config/validate", post(validate))
        .route("/v1/config/history", get(history))
        .route("/v1/config/versions/{version}", get(get_version))
        .route("/v1/config/rollback", post(rollback))
        .route(
            "/v1/clusters/{name}",
            put(put_part::<ClusterSpec>).delete(delete_part::<ClusterSpec>),
        )
        .route(
            "/v1/routes/{name}",
            put(put_part::<RouteSpec>).delete(delete_part::<RouteSpec>),
        )
        .route(
            "/v1/models/{name}",
            put(put_part::<ModelSpec>).delete(delete_part::<ModelSpec>),
        )
        .route(
            "/v1/experiments/{name}",
            put(put_part::<ExperimentSpec>).delete(delete_part::<ExperimentSpec>),
        )
        .route(
            "/v1/objectives/{name}",
            put(put_part::<ObjectiveSpec>).delete(delete_part::<ObjectiveSpec>),
        )
        .with_state(api)
}

async fn get_config(State(api): State<Arc<ConfigApi>>) -> Response {
    rules_response(&api.store.current())
}

async fn put_config(State(api): State<Arc<ConfigApi>>, request: Request) -> Response {
    api.change(request, IfMatch::Required, true, |body, _| {
        Ok((parse_rules(body)?, "replace".to_owned()))
    })
    .await
}

async fn validate(State(api): State<Arc<ConfigApi>>, request: Request) -> Response {
    let outcome = async {
        let body = api.json_body(request).await?;
        let rules = parse_rules(&body)?;
        Ok::<_, ApiError>(rules.warnings().to_vec())
    }
    .await;
    match outcome {
        Ok(warnings) => axum::Json(json!({ "valid": true, "warnings": warnings })).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn history(State(api): State<Arc<ConfigApi>>) -> Response {
    let current = api.store.current().info.version;
    axum::Json(json!({ "current": current, "versions": api.store.history() })).into_response()
}

async fn get_version(State(api): State<Arc<ConfigApi>>, Path(version): Path<String>) -> Response {
    let Ok(version) = version.parse::<u64>() else {
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_version",
            format!("{version:?} is not a version number"),
        )
        .into_response();
    };
    let store = Arc::clone(&api.store);
    match tokio::task::spawn_blocking(move || store.get(version)).await {
        Ok(Ok(Some(snapshot))) => rules_response(&snapshot),
        Ok(Ok(None)) => not_kept(version).into_response(),
        Ok(Err(e)) => internal(e.to_string()).into_response(),
        Err(e) => internal(e.to_string()).into_response(),
    }
}

async fn rollback(State(api): State<Arc<ConfigApi>>, request: Request) -> Response {
    let store = Arc::clone(&api.store);
    api.change(request, IfMatch::Optional, true, move |body, _| {
        let RollbackBody { version } = parse_json(body, "$")?;
        match store.get(version) {
            Ok(Some(snapshot)) => Ok((
                snapshot.rules.clone(),
                format!("rollback to version {version}"),
            )),
            Ok(None) => Err(not_kept(version)),
            Err(e) => Err(internal(e.to_string())),
        }
    })
    .await
}

async fn put_part<T: Part>(
    State(api): State<Arc<ConfigApi>>,
    Path(name): Path<String>,
    request: Request,
) -> Response {
    api.change(request, IfMatch::Optional, true, |body, current| {
        let path = format!("$.{}[{name:?}]", T::FIELD);
        let value: T = parse_json(body, &path)?;
        let mut next = current.clone();
        T::map(&mut next).insert(name.clone(), value);
        Ok((validated(next)?, format!("put {}[{name:?}]", T::FIELD)))
    })
    .await
}

async fn delete_part<T: Part>(
    State(api): State<Arc<ConfigApi>>,
    Path(name): Path<String>,
    request: Request,
) -> Response {
    api.change(request, IfMatch::Optional, false, |_, current| {
        let mut next = current.clone();
        if T::map(&mut next).remove(&name).is_none() {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("there is no {}[{name:?}]", T::FIELD),
            ));
        }
        Ok((validated(next)?, format!("delete {}[{name:?}]", T::FIELD)))
    })
    .await
}

// === helpers ===

fn etag(version: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\"")).expect("digits and quotes are a valid header")
}

fn rules_response(snapshot: &Snapshot) -> Response {
    (
        [(header::ETAG, etag(snapshot.info.version))],
        axum::Json(&*snapshot.rules),
    )
        .into_response()
}

/// `If-Match`: `None` when absent, `Some(None)` for `*`, `Some(Some(n))` for `"n"` (also
/// `W/"n"` or a bare `n`).
fn parse_if_match(headers: &HeaderMap) -> Result<Option<Option<u64>>, ApiError> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let bad = || {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_if_match",
            "If-Match must be one version as an entity tag, e.g. If-Match: \"7\"",
        )
    };
    let text = value.to_str().map_err(|_| bad())?.trim();
    if text == "*" {
        return Ok(Some(None));
    }
    let text = text.strip_prefix("W/").unwrap_or(text);
    let text = text
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(text);
    text.parse().map(|n| Some(Some(n))).map_err(|_| bad())
}

/// Parses a whole rule set; a parse error or a validation failure is a 400 with the
/// problems.
fn parse_rules(body: &[u8]) -> Result<ValidRuleSet, ApiError> {
    models_config::parse_slice(body).map_err(|e| match e {
        ConfigError::Invalid(errors) => invalid_config(errors.0),
        e => invalid_json(e.issues()),
    })
}

/// Parses one JSON value of type `T` found at `path` of the rule set.
fn parse_json<T: DeserializeOwned>(body: &[u8], path: &str) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let inner = e.path().to_string();
        let at = if inner == "." {
            path.to_owned()
        } else {
            format!("{path}.{inner}")
        };
        invalid_json(vec![Issue::new(at, e.inner().to_string())])
    })?;
    deserializer
        .end()
        .map_err(|e| invalid_json(vec![Issue::new(path, e.to_string())]))?;
    Ok(value)
}

/// Validates a rule set edited in place (once: what is stored and applied is this value).
fn validated(rules: RuleSet) -> Result<ValidRuleSet, ApiError> {
    ValidRuleSet::new(rules).map_err(|e| invalid_config(e.0))
}

fn invalid_json(problems: Vec<Issue>) -> ApiError {
    let message = problems
        .first()
        .map(|p| p.message.clone())
        .unwrap_or_else(|| "invalid JSON".to_owned());
    ApiError {
        problems: Some(problems),
        ..ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", message)
    }
}

fn invalid_config(problems: Vec<Issue>) -> ApiError {
    let message = match problems.len() {
        1 => "the rule set has 1 problem".to_owned(),
        n => format!("the rule set has {n} problems"),
    };
    ApiError {
        problems: Some(problems),
        ..ApiError::new(StatusCode::BAD_REQUEST, "invalid_config", message)
    }
}

fn conflict(expected: u64, current: u64) -> ApiError {
    ApiError {
        current_version: Some(current),
        ..ApiError::new(
            StatusCode::CONFLICT,
            "version_conflict",
            format!("If-Match is version {expected}, but the current version is {current}"),
        )
    }
}

fn not_kept(version: u64) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("version {version} is not in the history"),
    )
}

fn internal(message: String) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
}

// === impl ApiError ===

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            problems: None,
            current_version: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({ "code": self.code, "message": self.message });
        if let Some(problems) = self.problems {
            error["problems"] = json!(problems);
        }
        if let Some(current) = self.current_version {
            error["current_version"] = current.into();
        }
        let mut response = (self.status, axum::Json(json!({ "error": error }))).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(current) = self.current_version {
            response.headers_mut().insert(header::ETAG, etag(current));
        }
        response
    }
}

/// Counts of added, removed and changed entries in each part of the rule set.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Diff {
    parts: [(&'static str, [usize; 3]); 5],
}

// === impl Diff ===

impl Diff {
    /// What changed from `old` to `new`.
    pub fn new(old: &RuleSet, new: &RuleSet) -> Self {
        Diff {
            parts: [
                ("clusters", count(&old.clusters, &new.clusters)),
                ("routes", count(&old.routes, &new.routes)),
                ("models", count(&old.models, &new.models)),
                ("experiments", count(&old.experiments, &new.experiments)),
                ("objectives", count(&old.objectives, &new.objectives)),
            ],
        }
    }
}

impl fmt::Display for Diff {
    /// `clusters +1 -0 ~0, routes +0 -0 ~2, ...`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (name, [added, removed, changed])) in self.parts.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{name} +{added} -{removed} ~{changed}")?;
        }
        Ok(())
    }
}

/// `[added, removed, changed]`.
fn count<V: PartialEq>(old: &BTreeMap<String, V>, new: &BTreeMap<String, V>) -> [usize; 3] {
    let added = new.keys().filter(|k| !old.contains_key(*k)).count();
    let removed = old.keys().filter(|k| !new.contains_key(*k)).count();
    let changed = new
        .iter()
        .filter(|(k, v)| old.get(*k).is_some_and(|o| o != *v))
        .count();
    [added, removed, changed]
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    fn rules(value: Value) -> RuleSet {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn if_match_takes_a_quoted_weak_or_bare_version_or_a_star() {
        let parse = |v: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::IF_MATCH, HeaderValue::from_static(v));
            parse_if_match(&headers).map_err(|e| e.status)
        };
        assert_eq!(parse("\"7\""), Ok(Some(Some(7))));
        assert_eq!(parse("W/\"7\""), Ok(Some(Some(7))));
        assert_eq!(parse("7"), Ok(Some(Some(7))));
        assert_eq!(parse("*"), Ok(Some(None)));
        assert_eq!(parse("\"x\""), Err(StatusCode::BAD_REQUEST));
        assert_eq!(parse_if_match(&HeaderMap::new()).unwrap(), None);
    }

    #[test]
    fn a_part_parse_error_names_the_field_and_position() {
        let err = parse_json::<RouteSpec>(br#"{"cluster": "a", "clustr": 1}"#, r#"$.routes["k"]"#)
            .unwrap_err();
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
        let problem = &err.problems.unwrap()[0];
        assert_eq!(problem.path, r#"$.routes["k"].clustr"#);
        assert!(
            problem.message.contains("unknown field `clustr`"),
            "{}",
            problem.message
        );
        assert!(problem.message.contains("column"), "{}", problem.message);
    }

    #[test]
    fn the_diff_counts_added_removed_and_changed_entries() {
        let old = rules(json!({
            "clusters": { "a": { "endpoints": ["127.0.0.1:1"] }, "b": { "endpoints": ["127.0.0.1:2"] } },
            "routes": { "a": { "cluster": "a" } }
        }));
        let new = rules(json!({
            "clusters": { "a": { "endpoints": ["127.0.0.1:9"] }, "c": { "endpoints": ["127.0.0.1:3"] } },
            "routes": { "a": { "cluster": "a" } }
        }));
        assert_eq!(
            Diff::new(&old, &new).to_string(),
            "clusters +1 -1 ~1, routes +0 -0 ~0, models +0 -0 ~0, experiments +0 -0 ~0, objectives +0 -0 ~0"
        );
    }
}
