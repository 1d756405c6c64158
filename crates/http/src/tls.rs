//! TLS termination for an `http.service` (SPEC §11.1.1 `tls`, mode `manual`): a PEM
//! certificate chain and key, optionally a CA that client certificates must chain to, made
//! into a rustls server config when the listener starts (a bad file is a start failure, as
//! a port in use is). tokio-rustls does the handshakes, each in its connection's task.

use std::sync::Arc;

use tokio_rustls::rustls;

/// The handshake-signature half of a certificate verifier, checked with the provider's
/// algorithms (`self.algs`), whatever the verifier makes of the certificate itself.
macro_rules! handshake_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &rustls::pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &rustls::pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
        }

        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.algs.supported_schemes()
        }
    };
}

/// ring, the provider reqwest's rustls already builds here (aws-lc-rs, rustls's newer
/// default, needs cmake and a C toolchain of its own); deprecated for lacking post-quantum
/// key exchange, which the classic suites here do not need.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    #[allow(deprecated)]
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate chain and its private key.
type Identity = (Vec<rustls::pki_types::CertificateDer<'static>>, rustls::pki_types::PrivateKeyDer<'static>);

/// The chain and key of PEM text (`cert`, `key`: the fields they came from, as errors name
/// them).
fn pem_identity(cert_pem: &str, key_pem: &str, cert: &str, key: &str) -> Result<Identity, String> {
    let certs: Vec<_> = rustls_pemfile::certs(&mut cert_pem.as_bytes()).collect::<Result<_, _>>().map_err(|e| format!("{cert}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{cert}: no PEM certificate in it"));
    }
    let private = rustls_pemfile::private_key(&mut key_pem.as_bytes()).map_err(|e| format!("{key}: {e}"))?.ok_or(format!("{key}: no PEM private key in it"))?;
    Ok((certs, private))
}

/// The certificates of a PEM bundle as trust roots (`field`: where it came from).
fn pem_roots(pem: &str, field: &str) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut pem.as_bytes()) {
        roots.add(c.map_err(|e| format!("{field}: {e}"))?).map_err(|e| format!("{field}: {e}"))?;
    }
    if roots.is_empty() {
        return Err(format!("{field}: no PEM certificate in it"));
    }
    Ok(roots)
}

/// What to verify of a client's certificate (`client_auth`).
#[derive(Clone, Debug, PartialEq)]
pub enum ClientAuth {
    /// No client certificate asked for.
    None,
    /// Asked for, taken unverified, not required (`request`).
    Request,
    /// Required, taken unverified (`require_any`): the client proves it holds the
    /// certificate's key, but the certificate may chain to anything.
    RequireAny,
    /// Asked for and verified against the CA when given (`verify_if_given`).
    VerifyIfGiven,
    /// Required and verified (`require_and_verify`).
    Require,
}

/// A server's TLS settings, as PEM text (read from files or the environment by the cli).
#[derive(Clone, PartialEq)]
pub struct TlsSettings {
    pub cert_pem: String,
    pub key_pem: String,
    pub client_ca_pem: Option<String>,
    pub client_auth: ClientAuth,
}

impl std::fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // (never the key)
        f.debug_struct("TlsSettings").field("client_auth", &self.client_auth).finish_non_exhaustive()
    }
}

impl TlsSettings {
    /// The acceptor these settings make, or what is wrong with them.
    pub fn acceptor(&self) -> Result<tokio_rustls::TlsAcceptor, String> {
        let (certs, key) = pem_identity(&self.cert_pem, &self.key_pem, "tls.cert", "tls.key")?;
        let provider = provider();
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions().map_err(|e| e.to_string())?;
        let builder = match (&self.client_auth, &self.client_ca_pem) {
            (ClientAuth::None, _) => builder.with_no_client_auth(),
            (auth @ (ClientAuth::Request | ClientAuth::RequireAny), _) => builder.with_client_cert_verifier(Arc::new(Unverified {
                mandatory: *auth == ClientAuth::RequireAny,
                algs: provider.signature_verification_algorithms,
            })),
            (_, None) => return Err("tls.client_auth: verifying client certificates needs client_ca".into()),
            (auth, Some(ca)) => {
                let roots = pem_roots(ca, "tls.client_ca")?;
                let v = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
                let v = if *auth == ClientAuth::VerifyIfGiven { v.allow_unauthenticated() } else { v };
                builder.with_client_cert_verifier(v.build().map_err(|e| format!("tls.client_ca: {e}"))?)
            }
        };
        let mut config = builder.with_single_cert(certs, key).map_err(|e| format!("tls: {e}"))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
    }
}

/// `request` / `require_any`: a client certificate is asked for and not checked against any
/// CA (Go's `RequestClientCert` / `RequireAnyClientCert`); the handshake's signature is still
/// verified, so the client holds the certificate's key.
#[derive(Debug)]
struct Unverified {
    mandatory: bool,
    algs: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl rustls::server::danger::ClientCertVerifier for Unverified {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        Ok(rustls::server::danger::ClientCertVerified::assertion())
    }

    handshake_signatures!();
}

/// An `http_client` request's own TLS (its `tls` option, as Wippy's): a client certificate
/// and key (mutual TLS), a CA that replaces the system's roots, the name the server's
/// certificate must have, or no verification at all.
#[derive(Debug, Default, Clone, PartialEq, Eq, Hash)]
pub struct ClientTls {
    pub cert: Option<String>,
    pub key: Option<String>,
    pub ca: Option<String>,
    pub server_name: Option<String>,
    pub insecure_skip_verify: bool,
}

/// The system's roots, loaded once (what reqwest's own client trusts too).
fn native_roots() -> Arc<rustls::RootCertStore> {
    static ROOTS: std::sync::OnceLock<Arc<rustls::RootCertStore>> = std::sync::OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            Arc::new(roots)
        })
        .clone()
}

impl ClientTls {
    /// The rustls client configuration, or what is wrong with the options (an Invalid
    /// error's message).
    pub fn config(&self) -> Result<rustls::ClientConfig, String> {
        let provider = provider();
        let roots = match &self.ca {
            None => native_roots(),
            Some(ca) => Arc::new(pem_roots(ca, "tls.ca")?),
        };
        let name = match &self.server_name {
            Some(n) => Some(rustls::pki_types::ServerName::try_from(n.clone()).map_err(|e| format!("tls.server_name {n:?}: {e}"))?),
            None => None,
        };
        let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider.clone()).build().map_err(|e| format!("tls: {e}"))?;
        let verifier = Arc::new(ServerVerifier { webpki, name, insecure: self.insecure_skip_verify, algs: provider.signature_verification_algorithms });
        let builder = rustls::ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions().map_err(|e| e.to_string())?.dangerous().with_custom_certificate_verifier(verifier);
        let mut config = match (&self.cert, &self.key) {
            (None, None) => builder.with_no_client_auth(),
            (Some(cert), Some(key)) => {
                let (certs, key) = pem_identity(cert, key, "tls.cert", "tls.key")?;
                builder.with_client_auth_cert(certs, key).map_err(|e| format!("tls: {e}"))?
            }
            _ => return Err("tls: cert and key must be given together".into()),
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}

/// The server's certificate checked against the roots under `name` when one is given (Go's
/// `ServerName`), or not checked (`insecure_skip_verify`); the handshake's signatures are
/// verified either way.
#[derive(Debug)]
struct ServerVerifier {
    webpki: Arc<rustls::client::WebPkiServerVerifier>,
    name: Option<rustls::pki_types::ServerName<'static>>,
    insecure: bool,
    algs: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl rustls::client::danger::ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        if self.insecure {
            return Ok(rustls::client::danger::ServerCertVerified::assertion());
        }
        self.webpki.verify_server_cert(end_entity, intermediates, self.name.as_ref().unwrap_or(server_name), ocsp_response, now)
    }

    handshake_signatures!();
}
