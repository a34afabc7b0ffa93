//! TLS shared by the platform's listeners and clients (rustls with the *ring* provider):
//! a server certificate and key read from PEM files and re-read when the files change,
//! server and client configurations with ALPN, and telling a TLS `ClientHello` from plain
//! HTTP by its first byte.
//!
//! A reload never interrupts a connection: each handshake asks [`ReloadingCert`] for the
//! key in force at that moment, and connections already up keep the one they started with.
//! A file that cannot be read or does not hold a matching certificate and key is logged and
//! the previous pair stays in force.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// ALPN protocol ids offered by a listener that serves both HTTP versions, most preferred
/// first.
pub const ALPN_H2_HTTP1: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// How often [`ReloadingCert::watch`] looks at the files.
pub const RELOAD_POLL: Duration = Duration::from_millis(250);

/// The first byte of a TLS record carrying a handshake (`ClientHello` included). No HTTP/1.1
/// method and no HTTP/2 preface starts with it.
pub const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Whether a connection whose first byte is `first` starts a TLS handshake.
#[must_use]
pub fn starts_tls(first: u8) -> bool {
    first == TLS_HANDSHAKE_RECORD
}

/// What was wrong with a certificate, key or CA file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or parsed as PEM.
    #[error("{what} {path}: {reason}")]
    File {
        /// What the file should hold (`certificate`, `private key`, `CA file`).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why it was not usable.
        reason: String,
    },
    /// rustls refused the material (a key that does not match the certificate, say).
    #[error("{context}: {source}")]
    Rustls {
        /// Which files or settings.
        context: String,
        /// rustls's reason.
        #[source]
        source: rustls::Error,
    },
}

/// The crypto provider every configuration here uses.
#[must_use]
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads a PEM certificate chain (leaf first); at least one certificate.
///
/// # Errors
///
/// When the file cannot be read or holds no certificate.
pub fn read_certs(
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let file_error = |reason: String| TlsError::File {
        what,
        path: path.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(e.to_string()))?;
    if certs.is_empty() {
        return Err(file_error("no PEM certificate in it".into()));
    }
    Ok(certs)
}

/// Reads a certificate chain and its private key (PKCS#8, PKCS#1 or SEC1 PEM) and checks
/// that they belong together.
///
/// # Errors
///
/// When either file is unusable or the key does not match the leaf certificate.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let chain = read_certs(cert, "certificate")?;
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::File {
        what: "private key",
        path: key.to_path_buf(),
        reason: e.to_string(),
    })?;
    CertifiedKey::from_der(chain, private, &provider()).map_err(|source| TlsError::Rustls {
        context: format!("certificate {} with key {}", cert.display(), key.display()),
        source,
    })
}

/// The roots of trust in a PEM CA file.
///
/// # Errors
///
/// When the file is unusable or none of its certificates can serve as a root.
pub fn read_roots(ca_file: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(ca_file, "CA file")? {
        roots.add(cert).map_err(|source| TlsError::Rustls {
            context: format!("CA file {}", ca_file.display()),
            source,
        })?;
    }
    Ok(roots)
}

/// A server certificate and key from two files, swapped for the new pair when the files
/// change (see [`ReloadingCert::watch`]).
pub struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    current: ArcSwap<CertifiedKey>,
}

impl fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key material.
        f.debug_struct("ReloadingCert")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

// === impl ReloadingCert ===

impl ReloadingCert {
    /// Loads the pair once; the caller decides whether to [`watch`](Self::watch) it.
    ///
    /// # Errors
    ///
    /// When the files are unusable (see [`load_certified_key`]).
    pub fn load(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Result<Arc<Self>, TlsError> {
        let (cert, key) = (cert.into(), key.into());
        let first = load_certified_key(&cert, &key)?;
        Ok(Arc::new(Self {
            cert,
            key,
            current: ArcSwap::from_pointee(first),
        }))
    }

    /// Re-reads the files now. On failure the pair in force stays.
    ///
    /// # Errors
    ///
    /// When the files are unusable; nothing changes then.
    pub fn reload(&self) -> Result<(), TlsError> {
        let next = load_certified_key(&self.cert, &self.key)?;
        self.current.store(Arc::new(next));
        Ok(())
    }

    /// The pair in force.
    #[must_use]
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.load_full()
    }

    /// Starts a thread that looks at both files every [`RELOAD_POLL`] and reloads when
    /// either one's modification time or size changes. The thread ends when the last
    /// handle to `self` is dropped.
    ///
    /// # Errors
    ///
    /// When the thread cannot be started.
    pub fn watch(self: &Arc<Self>) -> std::io::Result<()> {
        let weak: Weak<Self> = Arc::downgrade(self);
        let mut seen = self.stamp();
        std::thread::Builder::new()
            .name("tls-reload".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(RELOAD_POLL);
                    let Some(this) = weak.upgrade() else { return };
                    let now = this.stamp();
                    if now == seen {
                        continue;
                    }
                    seen = now;
                    match this.reload() {
                        Ok(()) => tracing::info!(
                            cert = %this.cert.display(),
                            "TLS certificate reloaded"
                        ),
                        Err(e) => tracing::warn!(
                            error = %e,
                            "TLS certificate not reloaded; the previous one stays in force"
                        ),
                    }
                }
            })?;
        Ok(())
    }

    fn stamp(&self) -> [Option<(SystemTime, u64)>; 2] {
        let one = |path: &Path| {
            std::fs::metadata(path)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        };
        [one(&self.cert), one(&self.key)]
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// A server configuration presenting `cert`, offering `alpn` (most preferred first).
///
/// # Errors
///
/// Only when the provider supports no safe protocol version (a build bug).
pub fn server_config(
    cert: Arc<ReloadingCert>,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Rustls {
            context: "server protocol versions".into(),
            source,
        })?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// A client configuration trusting the roots in `ca_file`, presenting `identity` (client
/// certificate and key files, for mTLS) when given, offering `alpn`.
///
/// # Errors
///
/// When a file is unusable or the client key does not match its certificate.
pub fn client_config(
    ca_file: &Path,
    identity: Option<(&Path, &Path)>,
    alpn: &[&[u8]],
) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = read_roots(ca_file)?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Rustls {
            context: "client protocol versions".into(),
            source,
        })?
        .with_root_certificates(roots);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let pair = load_certified_key(cert, key)?;
            builder.with_client_cert_resolver(Arc::new(FixedClientCert(Arc::new(pair))))
        }
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// One client certificate, offered whatever the server asks for.
struct FixedClientCert(Arc<CertifiedKey>);

impl fmt::Debug for FixedClientCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FixedClientCert")
    }
}

impl rustls::client::ResolvesClientCert for FixedClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }

    fn has_certs(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, name: &str, host: &str) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![host.to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (c, k) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    #[test]
    fn the_first_byte_tells_tls_from_http() {
        assert!(starts_tls(0x16));
        for plain in [b'G', b'P', b'H', b'D', b'O', b'C', b'T'] {
            assert!(!starts_tls(plain));
        }
    }

    #[test]
    fn a_pair_loads_and_a_bad_reload_keeps_the_previous_one() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_pair(dir.path(), "a", "a.test");
        let reloading = ReloadingCert::load(&cert, &key).unwrap();
        let before = reloading.current();
        std::fs::write(&cert, "not pem").unwrap();
        let error = reloading.reload().unwrap_err().to_string();
        assert!(error.contains("certificate"), "{error}");
        assert!(Arc::ptr_eq(&before, &reloading.current()));
        let (other_cert, other_key) = write_pair(dir.path(), "b", "b.test");
        std::fs::copy(&other_cert, &cert).unwrap();
        std::fs::copy(&other_key, &key).unwrap();
        reloading.reload().unwrap();
        assert_ne!(before.cert[0], reloading.current().cert[0]);
    }

    #[test]
    fn a_key_of_another_certificate_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, _) = write_pair(dir.path(), "a", "a.test");
        let (_, other_key) = write_pair(dir.path(), "b", "b.test");
        let error = load_certified_key(&cert, &other_key)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("a.pem") && error.contains("b.key"),
            "{error}"
        );
    }

    #[test]
    fn missing_files_are_named() {
        let error = load_certified_key(Path::new("/nonexistent/c.pem"), Path::new("k"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("/nonexistent/c.pem"), "{error}");
        let error = client_config(Path::new("/nonexistent/ca.pem"), None, &ALPN_H2_HTTP1)
            .unwrap_err()
            .to_string();
        assert!(error.contains("CA file /nonexistent/ca.pem"), "{error}");
    }
}
