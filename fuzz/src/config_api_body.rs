//! `config_api_body`: a request (see [`crate::head`]: method, path, headers, body) through
//! Lightbulb's config API router ([`lightbulb::api::router`]), in process, over a store in
//! memory holding `models-config/examples/full.json` as version 1. Every request gets a fresh
//! API, store and engine, so an input means the same thing whenever it runs.
//!
//! What is decoded on the way: the bearer token, `If-Match`, `Content-Type`,
//! `Content-Length`, the body within its limit, and the body itself as a whole rule set
//! (`PUT /v1/config`, `POST /v1/config/validate`), one part of it
//! (`PUT /v1/{clusters,routes,models,experiments,objectives}/{name}`) or a rollback
//! (`POST /v1/config/rollback`).
//!
//! Properties, beside "never panics": no answer is a 500 (nothing here can fail inside);
//! every answer is JSON, an error one `{"error": {"code", "message"}}`; `validate` accepts
//! exactly what [`models_config::parse_slice`] accepts; a change that is accepted is the new
//! current version, in force, and reads back as a valid rule set.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::body::Body;
use http::{Method, StatusCode};
use http_body_util::BodyExt as _;
use lightbulb::api::{Auth, ConfigApi};
use lightbulb::auth::Tokens;
use lightbulb::reload::Reloader;
use lightbulb::store::{Snapshot, Store, StoreError, VersionInfo};
use lightbulb::{Engine, ResolveCache};
use models_config::ValidRuleSet;
use tower::ServiceExt as _;

/// The rule set in the store when each request starts (as version 1).
const RULES: &str = include_str!("../../models-config/examples/full.json");
/// The token the API accepts (the seed corpus uses it).
pub const TOKEN: &str = "fuzz-token";
/// The API's body limit.
const MAX_BODY_BYTES: usize = 64 * 1024;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime starts")
    })
}

fn seed() -> &'static ValidRuleSet {
    static SEED: OnceLock<ValidRuleSet> = OnceLock::new();
    SEED.get_or_init(|| {
        models_config::parse(RULES)
            .expect("the example rule set is valid")
            .with_version(1)
    })
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let head = crate::head::split(data);
    let Some(request) = head.request(Body::from(head.body.to_vec())) else {
        return;
    };
    let is_validate =
        request.method() == Method::POST && request.uri().path() == "/v1/config/validate";
    let is_change = matches!(
        *request.method(),
        Method::PUT | Method::POST | Method::DELETE
    );

    let store = Arc::new(MemoryStore::new(seed().clone()));
    let engine = Arc::new(ArcSwap::from_pointee(Engine::new(seed())));
    let cache = Arc::new(ResolveCache::new(64, Duration::from_secs(60)));
    let (rules, _watch) = tokio::sync::watch::channel(seed().clone());
    let reloader = Reloader::new(Arc::clone(&engine), cache, rules);
    let mut tokens = Tokens::default();
    tokens.add("fuzz", TOKEN);
    let api = Arc::new(ConfigApi::new(
        Arc::clone(&store) as Arc<dyn Store>,
        reloader,
        Auth::Tokens(tokens),
        MAX_BODY_BYTES,
    ));
    let app = lightbulb::api::router(api);

    let (status, content_type, body) = runtime().block_on(async {
        let response = app
            .oneshot(request)
            .await
            .expect("the router is infallible");
        let status = response.status();
        let content_type = response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = response
            .into_body()
            .collect()
            .await
            .expect("a response body in memory is read")
            .to_bytes();
        (status, content_type, body)
    });

    assert_ne!(
        status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "nothing can fail inside: {}",
        String::from_utf8_lossy(&body)
    );
    if content_type.as_deref() == Some("application/json") {
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_else(|e| {
            panic!(
                "a JSON answer is JSON ({e}): {}",
                String::from_utf8_lossy(&body)
            )
        });
        if !status.is_success() {
            assert!(
                json["error"]["code"].is_string() && json["error"]["message"].is_string(),
                "an error answer names its code and message: {json}"
            );
        }
    } else {
        // Only axum's own answers are not JSON: no such route or method (404, 405), or a
        // path it cannot extract (400).
        assert!(
            status.is_client_error(),
            "the API answers in JSON: {status} {}",
            String::from_utf8_lossy(&body)
        );
    }

    if is_validate {
        let parsed = models_config::parse_slice(head.body);
        if status == StatusCode::OK {
            assert!(parsed.is_ok(), "validate accepted what the parser refuses");
        } else if status == StatusCode::BAD_REQUEST
            && let Ok(_) = parsed
        {
            panic!(
                "validate refused what the parser accepts: {}",
                String::from_utf8_lossy(&body)
            );
        }
    }

    let current = store.current();
    if is_change && status.is_success() && !is_validate {
        assert_eq!(
            current.info.version, 2,
            "an accepted change is the next version"
        );
        assert_eq!(current.rules.version, 2, "and the rule set carries it");
        assert_eq!(engine.load().version(), 2, "and it is in force");
        let json = serde_json::to_vec(&*current.rules).expect("a rule set serializes");
        let back = models_config::parse_slice(&json).expect("the stored rule set reads back");
        assert_eq!(*back, *current.rules, "as it was stored");
    } else {
        assert_eq!(current.info.version, 1, "nothing else changes the store");
        assert_eq!(engine.load().version(), 1, "or what is in force");
    }
}

/// A [`Store`] in memory, as the directory store behaves (compare-and-swap on the current
/// version, the history newest first), without the files.
#[derive(Debug)]
pub struct MemoryStore {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    current: Snapshot,
    kept: BTreeMap<u64, Snapshot>,
}

impl MemoryStore {
    /// A store whose only version is `rules` (at its own version, written by `seed`).
    pub fn new(rules: ValidRuleSet) -> Self {
        let snapshot = Snapshot {
            info: VersionInfo {
                version: rules.version,
                written_at_unix_ms: 0,
                who: "seed".to_owned(),
            },
            rules,
        };
        let kept = BTreeMap::from([(snapshot.info.version, snapshot.clone())]);
        Self {
            state: Mutex::new(State {
                current: snapshot,
                kept,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Store for MemoryStore {
    fn current(&self) -> Snapshot {
        self.lock().current.clone()
    }

    fn put(&self, expected: u64, rules: ValidRuleSet, who: &str) -> Result<Snapshot, StoreError> {
        let mut state = self.lock();
        let current = state.current.info.version;
        if expected != current {
            return Err(StoreError::Conflict { expected, current });
        }
        let version = current + 1;
        let snapshot = Snapshot {
            info: VersionInfo {
                version,
                written_at_unix_ms: 0,
                who: who.to_owned(),
            },
            rules: rules.with_version(version),
        };
        state.kept.insert(version, snapshot.clone());
        state.current = snapshot.clone();
        Ok(snapshot)
    }

    fn history(&self) -> Vec<VersionInfo> {
        self.lock()
            .kept
            .values()
            .rev()
            .map(|s| s.info.clone())
            .collect()
    }

    fn get(&self, version: u64) -> Result<Option<Snapshot>, StoreError> {
        Ok(self.lock().kept.get(&version).cloned())
    }
}
