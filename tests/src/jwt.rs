//! JSON Web Tokens for the identity tests (and benches): key pairs, a JWKS file the router
//! watches, signed tokens and the malformed ones a router must refuse.
//!
//! Keys are generated at run time with the `openssl` command into a temp dir (RSA 2048 for
//! RS256, P-256 for ES256, Ed25519 for EdDSA) and never written anywhere else; no key is
//! kept in the repository. Tokens are signed with `jsonwebtoken::encode`, and the JWKS
//! entries come from `jsonwebtoken::jwk::Jwk::from_encoding_key` (the public half of the
//! private key) with the key's `kid`.
//!
//! ```ignore
//! let key = SigningKey::generate(KeyKind::Rs256, "rsa-1");
//! let jwks = JwksFile::new(&[&key]);
//! let token = key.sign(&claims("https://issuer.test", "router"));
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::process::write_text_atomically;

/// The kind of a signing key, and so the algorithm of its tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// RSA 2048, `RS256`.
    Rs256,
    /// ECDSA on P-256, `ES256`.
    Es256,
    /// Ed25519, `EdDSA`.
    EdDsa,
}

/// A private key (with its `kid`) that signs tokens.
#[derive(Debug, Clone)]
pub struct SigningKey {
    kind: KeyKind,
    kid: String,
    key: EncodingKey,
}

/// A JWKS file in its own temp dir, for `--jwt-jwks`; replaced atomically (write a temp
/// file, then rename) so a watcher never reads half a file. Dropping it removes the dir.
#[derive(Debug)]
pub struct JwksFile {
    path: PathBuf,
    _dir: TempDir,
}

// === impl KeyKind ===

impl KeyKind {
    /// All kinds, in a fixed order.
    pub const ALL: [KeyKind; 3] = [KeyKind::Rs256, KeyKind::Es256, KeyKind::EdDsa];

    /// The JWS algorithm of the kind.
    pub fn algorithm(self) -> Algorithm {
        match self {
            KeyKind::Rs256 => Algorithm::RS256,
            KeyKind::Es256 => Algorithm::ES256,
            KeyKind::EdDsa => Algorithm::EdDSA,
        }
    }

    /// The `openssl genpkey` arguments that generate a key of the kind.
    fn genpkey_args(self) -> &'static [&'static str] {
        match self {
            KeyKind::Rs256 => &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
            KeyKind::Es256 => &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
            KeyKind::EdDsa => &["-algorithm", "ED25519"],
        }
    }

    /// Parses a PKCS#8 PEM private key of the kind.
    fn encoding_key(self, pem: &[u8]) -> jsonwebtoken::errors::Result<EncodingKey> {
        match self {
            KeyKind::Rs256 => EncodingKey::from_rsa_pem(pem),
            KeyKind::Es256 => EncodingKey::from_ec_pem(pem),
            KeyKind::EdDsa => EncodingKey::from_ed_pem(pem),
        }
    }
}

// === impl SigningKey ===

impl SigningKey {
    /// Generates a fresh key of `kind` named `kid` with the `openssl` command (the key file
    /// lives in a temp dir removed before this returns).
    ///
    /// # Panics
    ///
    /// When `openssl` cannot be run or fails, or its key cannot be parsed.
    pub fn generate(kind: KeyKind, kid: &str) -> SigningKey {
        let dir = tempfile::tempdir().expect("create a temp dir for a key");
        let raw = dir.path().join("raw.pem");
        let pkcs8 = dir.path().join("pkcs8.pem");
        let mut genpkey = Command::new("openssl");
        genpkey
            .arg("genpkey")
            .args(kind.genpkey_args())
            .arg("-out")
            .arg(&raw);
        run_openssl(genpkey, "genpkey");
        // Make sure of PKCS#8 whatever the openssl version's default is.
        let mut topk8 = Command::new("openssl");
        topk8
            .args(["pkcs8", "-topk8", "-nocrypt", "-in"])
            .arg(&raw)
            .arg("-out")
            .arg(&pkcs8);
        run_openssl(topk8, "pkcs8 -topk8");
        let pem = std::fs::read(&pkcs8)
            .unwrap_or_else(|e| panic!("read the generated {kind:?} key: {e}"));
        let key = kind
            .encoding_key(&pem)
            .unwrap_or_else(|e| panic!("parse the generated {kind:?} key: {e}"));
        SigningKey {
            kind,
            kid: kid.to_owned(),
            key,
        }
    }

    /// The key's kind.
    pub fn kind(&self) -> KeyKind {
        self.kind
    }

    /// The key's id (`kid` of its JWK and of the tokens [`SigningKey::sign`] makes).
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public JWK of the key, with its `kid` and `alg`.
    ///
    /// # Panics
    ///
    /// When the public half cannot be derived (not for a key made by
    /// [`SigningKey::generate`]).
    pub fn jwk(&self) -> Jwk {
        let mut jwk = Jwk::from_encoding_key(&self.key, self.kind.algorithm())
            .unwrap_or_else(|e| panic!("the JWK of key {}: {e}", self.kid));
        jwk.common.key_id = Some(self.kid.clone());
        jwk
    }

    /// A token of `claims` signed by the key, its header naming the key's `kid`.
    ///
    /// # Panics
    ///
    /// When signing fails.
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.kind.algorithm());
        header.kid = Some(self.kid.clone());
        self.sign_with_header(&header, claims)
    }

    /// A token of `claims` signed by the key, its header without a `kid`.
    ///
    /// # Panics
    ///
    /// When signing fails.
    pub fn sign_without_kid(&self, claims: &Value) -> String {
        self.sign_with_header(&Header::new(self.kind.algorithm()), claims)
    }

    /// A token of `claims` signed by the key with `header` as is (its `alg` must be the
    /// key's).
    ///
    /// # Panics
    ///
    /// When signing fails.
    pub fn sign_with_header(&self, header: &Header, claims: &Value) -> String {
        jsonwebtoken::encode(header, claims, &self.key)
            .unwrap_or_else(|e| panic!("sign a token with key {}: {e}", self.kid))
    }
}

// === impl JwksFile ===

impl JwksFile {
    /// A JWKS file holding the public keys of `keys`.
    ///
    /// # Panics
    ///
    /// When the temp dir or the file cannot be created.
    pub fn new(keys: &[&SigningKey]) -> JwksFile {
        Self::with_text(&jwks(keys).to_string())
    }

    /// A "JWKS" file holding arbitrary `text` (e.g. something that is not a JWKS).
    ///
    /// # Panics
    ///
    /// When the temp dir or the file cannot be created.
    pub fn with_text(text: &str) -> JwksFile {
        let dir = tempfile::tempdir().expect("create a temp dir for a JWKS");
        let path = dir.path().join("jwks.json");
        write_text_atomically(&path, text);
        JwksFile { path, _dir: dir }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's path as a command-line argument.
    ///
    /// # Panics
    ///
    /// When the temp dir's path is not UTF-8.
    pub fn arg(&self) -> &str {
        self.path.to_str().expect("a UTF-8 temp dir path")
    }

    /// Replaces the file atomically with the public keys of `keys`.
    ///
    /// # Panics
    ///
    /// When the file cannot be written or renamed.
    pub fn rewrite(&self, keys: &[&SigningKey]) {
        self.rewrite_text(&jwks(keys).to_string());
    }

    /// Replaces the file atomically with arbitrary `text`.
    ///
    /// # Panics
    ///
    /// When the file cannot be written or renamed.
    pub fn rewrite_text(&self, text: &str) {
        write_text_atomically(&self.path, text);
    }
}

// === tokens and claims ===

/// The JWKS document (`{"keys": [..]}`) of the public keys of `keys`.
///
/// # Panics
///
/// When a JWK cannot be derived or serialised.
pub fn jwks(keys: &[&SigningKey]) -> Value {
    let set = JwkSet {
        keys: keys.iter().map(|k| k.jwk()).collect(),
    };
    serde_json::to_value(&set).expect("serialise a JWKS")
}

/// Seconds since the Unix epoch.
///
/// # Panics
///
/// When the clock is before 1970.
pub fn unix_now() -> i64 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_secs();
    i64::try_from(secs).expect("seconds since 1970 fit an i64")
}

/// The claims of a valid token for `issuer` and `audience`: `iss`, `aud`, `iat` now and
/// `exp` in an hour. Add or replace fields with [`crate::jwt::with_claims`].
pub fn claims(issuer: &str, audience: &str) -> Value {
    let now = unix_now();
    json!({ "iss": issuer, "aud": audience, "iat": now, "exp": now + 3600 })
}

/// `base` (a JSON object) with the fields of `extra` (a JSON object) added, replacing any of
/// the same name; a field of `extra` that is `null` is removed instead.
pub fn with_claims(mut base: Value, extra: &Value) -> Value {
    if let (Some(b), Some(e)) = (base.as_object_mut(), extra.as_object()) {
        for (name, value) in e {
            if value.is_null() {
                b.remove(name);
            } else {
                b.insert(name.clone(), value.clone());
            }
        }
    }
    base
}

/// A token of `claims` signed with HMAC-SHA256 under `secret` (`alg: HS256`), its header
/// naming `kid` when given, which a router validating against public keys must refuse.
///
/// # Panics
///
/// When signing fails.
pub fn hs256_token(secret: &[u8], kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = kid.map(str::to_owned);
    let key = EncodingKey::from_secret(secret).expect("an HMAC key");
    jsonwebtoken::encode(&header, claims, &key).expect("sign an HS256 token")
}

/// An unsigned token of `claims` (`alg: none`, empty signature), which a router must
/// refuse.
pub fn unsigned_token(claims: &Value) -> String {
    let header = json!({ "alg": "none", "typ": "JWT" });
    format!(
        "{}.{}.",
        base64url(header.to_string().as_bytes()),
        base64url(claims.to_string().as_bytes())
    )
}

/// `token` with the first byte of its signature changed (the first base64url character of
/// the signature carries that byte's top six bits), so the signature no longer verifies.
///
/// # Panics
///
/// When `token` has no signature part.
pub fn tamper_signature(token: &str) -> String {
    let dot = token.rfind('.').expect("a token has a signature part") + 1;
    let first = token[dot..].chars().next().expect("a non-empty signature");
    let other = if first == 'A' { 'B' } else { 'A' };
    format!("{}{other}{}", &token[..dot], &token[dot + 1..])
}

/// Base64url without padding (RFC 7515 §2), as in the parts of a JWS.
pub fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            let index = (n >> (18 - 6 * i)) & 0x3f;
            out.push(char::from(ALPHABET[index as usize]));
        }
    }
    out
}

/// Runs an `openssl` subcommand, failing loudly.
fn run_openssl(mut cmd: Command, what: &str) {
    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("run `openssl {what}` (is openssl installed?): {e}"));
    assert!(
        output.status.success(),
        "`openssl {what}` failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_matches_the_rfc_4648_test_vectors_without_padding() {
        for (input, expected) in [
            ("", ""),
            ("f", "Zg"),
            ("fo", "Zm8"),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg"),
            ("fooba", "Zm9vYmE"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64url(input.as_bytes()), expected, "{input:?}");
        }
        assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
    }

    #[test]
    fn a_tampered_token_differs_only_in_the_signature() {
        let token = "aGVhZA.Ym9keQ.QUJD";
        let tampered = tamper_signature(token);
        assert_eq!(tampered, "aGVhZA.Ym9keQ.AUJD");
        assert_eq!(tamper_signature("a.b.AUJD"), "a.b.BUJD");
    }

    #[test]
    fn null_claims_are_removed_and_others_replaced() {
        let base = json!({ "a": 1, "b": 2 });
        let got = with_claims(base, &json!({ "a": null, "b": 3, "c": "x" }));
        assert_eq!(got, json!({ "b": 3, "c": "x" }));
    }

    #[test]
    fn every_kind_of_generated_key_has_a_jwk_with_its_kid_and_algorithm() {
        for kind in KeyKind::ALL {
            let key = SigningKey::generate(kind, "k1");
            let jwk = serde_json::to_value(key.jwk()).expect("serialise a JWK");
            assert_eq!(jwk["kid"], "k1", "{kind:?}: {jwk}");
            let alg = serde_json::to_value(kind.algorithm()).expect("serialise an algorithm");
            assert_eq!(jwk["alg"], alg, "{kind:?}: {jwk}");
            let token = key.sign(&claims("iss", "aud"));
            let public = jsonwebtoken::DecodingKey::from_jwk(&key.jwk()).expect("a public key");
            let mut validation = jsonwebtoken::Validation::new(kind.algorithm());
            validation.set_issuer(&["iss"]);
            validation.set_audience(&["aud"]);
            jsonwebtoken::decode::<Value>(&token, &public, &validation)
                .unwrap_or_else(|e| panic!("{kind:?}: the token verifies with the JWK: {e}"));
            let tampered = tamper_signature(&token);
            assert!(
                jsonwebtoken::decode::<Value>(&tampered, &public, &validation).is_err(),
                "{kind:?}: a tampered token does not verify"
            );
        }
    }
}
