//! Certificates for TLS tests, made at run time with `rcgen`: a CA, server certificates
//! signed by it (for `localhost`, `127.0.0.1` and `::1` unless told otherwise), client
//! certificates for mTLS, and a second, unrelated CA whose certificates nobody trusts. Every
//! file is written into the [`Pki`]'s own temp dir, removed when it is dropped.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// A certificate and its key, as PEM files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    /// The certificate (leaf only).
    pub cert: PathBuf,
    /// The private key (PKCS#8).
    pub key: PathBuf,
}

/// A test CA with its files in a temp dir.
pub struct Pki {
    dir: tempfile::TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
    /// The CA certificate, for clients and servers that should trust it.
    pub ca_file: PathBuf,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki")
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

// === impl Pki ===

impl Pki {
    /// A new CA named `name`.
    ///
    /// # Panics
    ///
    /// When a key cannot be generated or a file cannot be written.
    pub fn new(name: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key"))
            .expect("CA certificate");
        let ca_file = dir.path().join(format!("{name}-ca.pem"));
        std::fs::write(&ca_file, ca.pem()).expect("write CA");
        Self { dir, ca, ca_file }
    }

    /// The temp dir holding every file.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A server certificate for `localhost`, `127.0.0.1` and `::1`.
    pub fn server(&self, name: &str) -> CertFiles {
        self.server_for(name, &["localhost", "127.0.0.1", "::1"])
    }

    /// A server certificate for the given DNS names and IP addresses.
    ///
    /// # Panics
    ///
    /// When a name is not valid or a file cannot be written.
    pub fn server_for(&self, name: &str, hosts: &[&str]) -> CertFiles {
        self.leaf(name, hosts, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client certificate (for mTLS) with common name `name`.
    pub fn client(&self, name: &str) -> CertFiles {
        self.leaf(name, &[], ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn leaf(&self, name: &str, hosts: &[&str], usage: ExtendedKeyUsagePurpose) -> CertFiles {
        let mut params =
            CertificateParams::new(hosts.iter().map(|h| (*h).to_string()).collect::<Vec<_>>())
                .expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![usage];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.ca).expect("sign leaf");
        let files = CertFiles {
            cert: self.dir.path().join(format!("{name}.pem")),
            key: self.dir.path().join(format!("{name}.key")),
        };
        std::fs::write(&files.cert, cert.pem()).expect("write cert");
        std::fs::write(&files.key, key.serialize_pem()).expect("write key");
        files
    }

    /// A rustls client configuration trusting this CA, offering `alpn`, with `identity`
    /// presented for mTLS when given.
    ///
    /// # Panics
    ///
    /// When the files do not load.
    pub fn client_config(
        &self,
        alpn: &[&[u8]],
        identity: Option<&CertFiles>,
    ) -> Arc<rustls::ClientConfig> {
        service_runtime::tls::client_config(
            &self.ca_file,
            identity.map(|i| (i.cert.as_path(), i.key.as_path())),
            alpn,
        )
        .expect("client config")
    }
}
