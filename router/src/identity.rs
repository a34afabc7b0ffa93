//! Identity from JWTs (DESIGN §12): `Authorization: Bearer` tokens verified with the keys of
//! a JWKS file, and claims mapped onto request headers so a client cannot forge them.
//!
//! Tokens are RS256, ES256 or EdDSA; the key is the one the token's `kid` names, or, without
//! a `kid`, any key of the token's algorithm. `exp`, `iss` and `aud` are required, `nbf`
//! checked when present, `iss` must be `--jwt-issuer` and `aud` contain `--jwt-audience`,
//! with no leeway. Each
//! `--jwt-claim-header CLAIM=HEADER` removes HEADER from the request and, when the token has
//! the claim, sets it to the claim's value, before anything else reads the request.
//!
//! A verified token is cached (by its text) until it expires, so a client that sends the
//! same token again pays one lookup. The JWKS file is re-read when it changes; the cache is
//! emptied then, so a key taken out of the file stops verifying at once.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use http::{HeaderMap, HeaderName, HeaderValue, header};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde_json::{Map, Value};

/// The algorithms accepted.
const ALGORITHMS: [Algorithm; 3] = [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA];
/// Verified tokens kept at most.
const CACHE_CAPACITY: u64 = 100_000;
/// Longest a verified token stays cached (it is also never used past its `exp`).
const CACHE_TTL: Duration = Duration::from_secs(300);

/// Why the JWT settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The JWKS file cannot be read.
    #[error("--jwt-jwks {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The JWKS file is not a JWK set with a usable key.
    #[error("--jwt-jwks {path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// A flag is missing or malformed.
    #[error("{0}")]
    Flag(String),
}

/// Verifies tokens and maps their claims.
pub struct Verifier {
    keys: ArcSwap<Vec<Key>>,
    /// One validation per accepted algorithm, in [`ALGORITHMS`] order.
    validations: [Validation; 3],
    /// `(claim, header)` pairs, in flag order.
    claim_headers: Box<[(Box<str>, HeaderName)]>,
    cache: moka::sync::Cache<Box<str>, Arc<Verified>>,
}

struct Key {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

/// A verified token: when it expires, and the header values its claims map to (aligned with
/// the claim-header pairs; `None`: the claim is absent, the header is removed).
#[derive(Debug)]
pub struct Verified {
    exp: u64,
    /// The mapped header values.
    pub mapped: Box<[Option<HeaderValue>]>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("keys", &self.keys.load().len())
            .field("claim_headers", &self.claim_headers)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// A verifier with the keys of the JWKS file at `jwks`, checking `issuer` and
    /// `audience`, mapping `claim_headers` (`CLAIM=HEADER` each).
    ///
    /// # Errors
    ///
    /// An unreadable or invalid JWKS, or a malformed `CLAIM=HEADER`.
    pub fn new(
        jwks: &Path,
        issuer: &str,
        audience: &str,
        claim_headers: &[String],
    ) -> Result<Self, IdentityError> {
        let bytes = std::fs::read(jwks).map_err(|source| IdentityError::Read {
            path: jwks.display().to_string(),
            source,
        })?;
        let keys = parse_jwks(&bytes).map_err(|message| IdentityError::Invalid {
            path: jwks.display().to_string(),
            message,
        })?;
        let mut pairs = Vec::with_capacity(claim_headers.len());
        for pair in claim_headers {
            let (claim, name) = pair.split_once('=').ok_or_else(|| {
                IdentityError::Flag(format!(
                    "--jwt-claim-header {pair:?}: expected CLAIM=HEADER"
                ))
            })?;
            let header = HeaderName::from_bytes(name.trim().to_ascii_lowercase().as_bytes())
                .map_err(|_| {
                    IdentityError::Flag(format!(
                        "--jwt-claim-header {pair:?}: invalid header name {name:?}"
                    ))
                })?;
            if claim.trim().is_empty() {
                return Err(IdentityError::Flag(format!(
                    "--jwt-claim-header {pair:?}: the claim name is empty"
                )));
            }
            pairs.push((Box::from(claim.trim()), header));
        }
        let validation = |algorithm| {
            let mut v = Validation::new(algorithm);
            v.leeway = 0;
            v.validate_nbf = true;
            v.set_issuer(&[issuer]);
            v.set_audience(&[audience]);
            v.set_required_spec_claims(&["exp", "iss", "aud"]);
            v
        };
        Ok(Verifier {
            keys: ArcSwap::from_pointee(keys),
            validations: ALGORITHMS.map(validation),
            claim_headers: pairs.into_boxed_slice(),
            cache: moka::sync::Cache::builder()
                .max_capacity(CACHE_CAPACITY)
                .time_to_live(CACHE_TTL)
                .build(),
        })
    }

    /// Replaces the keys with those of a changed JWKS file; an invalid one is logged and the
    /// keys in force stay.
    pub fn reload(&self, path: &Path, bytes: &[u8]) {
        match parse_jwks(bytes) {
            Ok(keys) => {
                let count = keys.len();
                self.keys.store(Arc::new(keys));
                self.cache.invalidate_all();
                tracing::info!(path = %path.display(), keys = count, "JWKS reloaded");
            }
            Err(message) => {
                tracing::error!(path = %path.display(), "JWKS rejected, keeping the keys in force: {message}");
            }
        }
    }

    /// The header names the claims are mapped onto.
    pub fn claim_headers(&self) -> impl Iterator<Item = &HeaderName> {
        self.claim_headers.iter().map(|(_, h)| h)
    }

    /// Verifies the request's bearer token; `Err` says why it is refused.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Arc<Verified>, &'static str> {
        let token = headers
            .get(header::AUTHORIZATION)
            .ok_or("no Authorization header")?
            .to_str()
            .map_err(|_| "the Authorization header is not text")?;
        let token = token
            .strip_prefix("Bearer ")
            .or_else(|| token.strip_prefix("bearer "))
            .ok_or("the Authorization header is not a Bearer token")?
            .trim();
        if token.is_empty() {
            return Err("the bearer token is empty");
        }
        let now = now_secs();
        if let Some(hit) = self.cache.get(token) {
            // As jsonwebtoken does with no leeway: valid up to and including `exp`.
            if hit.exp >= now {
                return Ok(hit);
            }
            self.cache.invalidate(token);
            return Err("the token has expired");
        }
        let verified = Arc::new(self.verify(token)?);
        self.cache.insert(Box::from(token), Arc::clone(&verified));
        Ok(verified)
    }

    fn verify(&self, token: &str) -> Result<Verified, &'static str> {
        let header = decode_header(token).map_err(|_| "the token is malformed")?;
        let Some(slot) = ALGORITHMS.iter().position(|a| *a == header.alg) else {
            return Err("the token's algorithm is not RS256, ES256 or EdDSA");
        };
        let keys = self.keys.load();
        let mut tried = false;
        for key in keys.iter().filter(|k| {
            k.algorithm == header.alg
                && (header.kid.is_none() || k.kid.is_none() || k.kid == header.kid)
        }) {
            tried = true;
            match decode::<Map<String, Value>>(token, &key.key, &self.validations[slot]) {
                Ok(data) => return Ok(self.verified(&data.claims)),
                Err(e) => match e.kind() {
                    jsonwebtoken::errors::ErrorKind::InvalidSignature => continue,
                    jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                        return Err("the token has expired");
                    }
                    jsonwebtoken::errors::ErrorKind::ImmatureSignature => {
                        return Err("the token is not valid yet");
                    }
                    jsonwebtoken::errors::ErrorKind::InvalidIssuer => {
                        return Err("the token's issuer is not the expected one");
                    }
                    jsonwebtoken::errors::ErrorKind::InvalidAudience => {
                        return Err("the token's audience is not the expected one");
                    }
                    jsonwebtoken::errors::ErrorKind::MissingRequiredClaim(_) => {
                        return Err("the token lacks a required claim (exp, iss or aud)");
                    }
                    _ => return Err("the token is malformed"),
                },
            }
        }
        if tried {
            Err("no key verifies the token's signature")
        } else {
            Err("no key of the JWKS matches the token")
        }
    }

    fn verified(&self, claims: &Map<String, Value>) -> Verified {
        let exp = claims.get("exp").and_then(Value::as_u64).unwrap_or(0);
        let mapped = self
            .claim_headers
            .iter()
            .map(|(claim, _)| {
                let text = match claims.get(&**claim)? {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    _ => return None,
                };
                HeaderValue::from_str(&text).ok()
            })
            .collect();
        Verified { exp, mapped }
    }

    /// Rewrites `headers` with the token's mapped claims: each mapped header removed, then
    /// set to its claim's value when the token has it.
    #[inline]
    pub fn apply(&self, verified: &Verified, headers: &mut HeaderMap) {
        for ((_, name), value) in self.claim_headers.iter().zip(verified.mapped.iter()) {
            headers.remove(name);
            if let Some(value) = value {
                headers.insert(name.clone(), value.clone());
            }
        }
    }
}

fn parse_jwks(bytes: &[u8]) -> Result<Vec<Key>, String> {
    let set: JwkSet = serde_json::from_slice(bytes).map_err(|e| format!("not a JWK set: {e}"))?;
    let mut keys = Vec::new();
    for (i, jwk) in set.keys.iter().enumerate() {
        match key_of(jwk) {
            Ok(key) => keys.push(key),
            Err(message) => tracing::warn!(index = i, "JWKS key skipped: {message}"),
        }
    }
    if keys.is_empty() {
        return Err("no RS256, ES256 or EdDSA key in the set".to_owned());
    }
    Ok(keys)
}

fn key_of(jwk: &Jwk) -> Result<Key, String> {
    let by_type = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Some(Algorithm::RS256),
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
            Some(Algorithm::ES256)
        }
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            Some(Algorithm::EdDSA)
        }
        _ => None,
    };
    let algorithm = match jwk.common.key_algorithm {
        Some(KeyAlgorithm::RS256) => Algorithm::RS256,
        Some(KeyAlgorithm::ES256) => Algorithm::ES256,
        Some(KeyAlgorithm::EdDSA) => Algorithm::EdDSA,
        Some(other) => return Err(format!("its alg {other} is not RS256, ES256 or EdDSA")),
        None => by_type.ok_or_else(|| "it is not an RSA, P-256 or Ed25519 key".to_owned())?,
    };
    if !ALGORITHMS.contains(&algorithm) || Some(algorithm) != by_type {
        return Err(format!("{algorithm:?} with this key type is not accepted"));
    }
    let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("unusable key: {e}"))?;
    Ok(Key {
        kid: jwk.common.key_id.clone(),
        algorithm,
        key,
    })
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &tempfile::TempDir, text: &str) -> std::path::PathBuf {
        let path = dir.path().join("jwks.json");
        std::fs::write(&path, text).unwrap();
        path
    }

    /// An Ed25519 public key (the RFC 8037 example key): public material only.
    const OKP: &str = r#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"a","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;

    #[test]
    fn bad_settings_are_refused_with_the_flag_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.json");
        let err = Verifier::new(&missing, "iss", "aud", &[]).unwrap_err();
        assert!(err.to_string().starts_with("--jwt-jwks"), "{err}");
        let empty = write(&dir, r#"{"keys":[]}"#);
        let err = Verifier::new(&empty, "iss", "aud", &[]).unwrap_err();
        assert!(
            err.to_string().contains("no RS256, ES256 or EdDSA key"),
            "{err}"
        );
        let jwks = write(&dir, OKP);
        let err = Verifier::new(&jwks, "iss", "aud", &["sub".to_owned()]).unwrap_err();
        assert!(err.to_string().contains("expected CLAIM=HEADER"), "{err}");
        let ok = Verifier::new(&jwks, "iss", "aud", &["sub=X-Forwarded-User".to_owned()]).unwrap();
        assert_eq!(
            ok.claim_headers().next().unwrap().as_str(),
            "x-forwarded-user"
        );
    }

    #[test]
    fn requests_without_a_usable_token_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let v = Verifier::new(&write(&dir, OKP), "iss", "aud", &[]).unwrap();
        let mut headers = HeaderMap::new();
        assert_eq!(
            v.authenticate(&headers).unwrap_err(),
            "no Authorization header"
        );
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert!(v.authenticate(&headers).is_err());
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer not.a.jwt"),
        );
        assert_eq!(
            v.authenticate(&headers).unwrap_err(),
            "the token is malformed"
        );
        // alg none
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0."),
        );
        assert!(v.authenticate(&headers).is_err());
    }

    #[test]
    fn claims_map_onto_headers_and_replace_what_the_client_sent() {
        let dir = tempfile::tempdir().unwrap();
        let v = Verifier::new(
            &write(&dir, OKP),
            "iss",
            "aud",
            &["tenant=x-tenant-id".to_owned(), "team=x-team".to_owned()],
        )
        .unwrap();
        let mut claims = Map::new();
        claims.insert("tenant".into(), Value::from("search"));
        let verified = v.verified(&claims);
        let mut headers = HeaderMap::new();
        headers.append("x-tenant-id", HeaderValue::from_static("forged"));
        headers.append("x-tenant-id", HeaderValue::from_static("forged-too"));
        headers.insert("x-team", HeaderValue::from_static("forged"));
        v.apply(&verified, &mut headers);
        let tenants: Vec<_> = headers.get_all("x-tenant-id").iter().collect();
        assert_eq!(tenants, ["search"]);
        assert!(
            headers.get("x-team").is_none(),
            "an absent claim removes the header"
        );
    }
}
