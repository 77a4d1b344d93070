//! QUIC endpoints for the tree: TLS 1.3 with self-signed certificates that
//! are *pinned*, not trusted by name.
//!
//! Every node (the edge, each peer) makes a fresh self-signed certificate at
//! start and tells the tracker its fingerprint (BLAKE3 of the certificate's
//! DER). The tracker hands a child its parent's fingerprint with the ticket,
//! and the child's TLS verifier accepts exactly that certificate: no CA, and
//! no "accept any certificate". The child proves who it is with the ticket
//! in its `Hello` frame (see [`crate::wire`]).

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls13_signature, CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// ALPN protocol name of the tree protocol, version 1.
pub const ALPN: &[u8] = b"treecast/1";

/// Name put in certificates; not checked (the fingerprint is).
pub const SERVER_NAME: &str = "treecast-node";

/// Why an endpoint configuration could not be made.
#[derive(Debug, thiserror::Error)]
pub enum QuicSetupError {
    /// Certificate generation failed.
    #[error("cannot generate a certificate: {0}")]
    Certificate(String),
    /// The TLS configuration was refused.
    #[error("invalid TLS configuration: {0}")]
    Tls(String),
}

/// A node's certificate, key and fingerprint.
#[derive(Debug)]
pub struct Identity {
    cert: CertificateDer<'static>,
    key: Vec<u8>,
    fingerprint: [u8; 32],
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Identity {
    /// Makes a fresh self-signed identity.
    pub fn generate() -> Result<Self, QuicSetupError> {
        let ck = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_owned()])
            .map_err(|e| QuicSetupError::Certificate(e.to_string()))?;
        let cert = ck.cert.der().clone();
        let fingerprint = *blake3::hash(&cert).as_bytes();
        Ok(Self {
            cert,
            key: ck.signing_key.serialize_der(),
            fingerprint,
        })
    }

    /// The fingerprint children pin, hex.
    pub fn fingerprint_hex(&self) -> String {
        hex::encode(self.fingerprint)
    }

    /// A server config presenting this identity.
    pub fn server_config(&self) -> Result<quinn::ServerConfig, QuicSetupError> {
        let mut tls = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| QuicSetupError::Tls(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(
                vec![self.cert.clone()],
                PrivatePkcs8KeyDer::from(self.key.clone()).into(),
            )
            .map_err(|e| QuicSetupError::Tls(e.to_string()))?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
            .map_err(|e| QuicSetupError::Tls(e.to_string()))?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
        config.transport_config(transport());
        Ok(config)
    }
}

/// A client config that accepts only the certificate with `fingerprint`.
pub fn client_config(fingerprint: [u8; 32]) -> Result<quinn::ClientConfig, QuicSetupError> {
    let provider = provider();
    let verifier = Arc::new(Pinned {
        fingerprint,
        algorithms: provider.signature_verification_algorithms,
    });
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| QuicSetupError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| QuicSetupError::Tls(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(transport());
    Ok(config)
}

/// Keep-alives every second hold a warm backup connection open (and
/// through NATs); ten silent seconds end a connection whose other side
/// vanished without closing it. Congestion control is BBR, not the
/// default Cubic: a live stream must hold its bitrate over a home link's
/// random loss, and a loss-based controller cannot (at 1% loss and
/// 120 ms, Cubic's window carries about 1 Mb/s; measured in the network
/// lab, where such children fell behind a parent with room to spare).
fn transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default()));
    t.keep_alive_interval(Some(std::time::Duration::from_secs(1)));
    t.max_idle_timeout(Some(quinn::VarInt::from_u32(10_000).into()));
    Arc::new(t)
}

/// Parses a hex fingerprint.
pub fn parse_fingerprint(hex_str: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_str, &mut out).ok()?;
    Some(out)
}

/// Accepts exactly one certificate, by fingerprint; signatures are still
/// checked, so the server must hold that certificate's key.
#[derive(Debug)]
struct Pinned {
    fingerprint: [u8; 32],
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if blake3::hash(end_entity).as_bytes() == &self.fingerprint {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "certificate does not match the fingerprint the tracker gave".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not used".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    async fn handshake(server: &Identity, pin: [u8; 32]) -> Result<(), String> {
        let local: SocketAddr = "127.0.0.1:0".parse().map_err(|e| format!("{e}"))?;
        let server_ep =
            quinn::Endpoint::server(server.server_config().map_err(|e| e.to_string())?, local)
                .map_err(|e| e.to_string())?;
        let addr = server_ep.local_addr().map_err(|e| e.to_string())?;
        let accept = tokio::spawn(async move {
            if let Some(inc) = server_ep.accept().await {
                let _ = inc.await;
            }
        });
        let mut client = quinn::Endpoint::client(local).map_err(|e| e.to_string())?;
        client.set_default_client_config(client_config(pin).map_err(|e| e.to_string())?);
        let result = client
            .connect(addr, SERVER_NAME)
            .map_err(|e| e.to_string())?
            .await
            .map(|_| ())
            .map_err(|e| e.to_string());
        accept.abort();
        result
    }

    #[tokio::test]
    async fn only_the_pinned_certificate_is_accepted() {
        let a = Identity::generate().expect("identity");
        let b = Identity::generate().expect("identity");
        handshake(&a, a.fingerprint)
            .await
            .expect("pinned certificate accepted");
        let err = handshake(&a, b.fingerprint)
            .await
            .expect_err("other certificate refused");
        assert!(err.contains("fingerprint"), "{err}");
        assert_eq!(parse_fingerprint(&a.fingerprint_hex()), Some(a.fingerprint));
    }
}
