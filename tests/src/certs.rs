//! Test certificates: a throwaway CA and a server certificate it signed.
//!
//! Why generate them: TLS tests (sslmode require / verify-ca / verify-full) need a chain
//! the client can verify, and checked-in certificates expire or leak into real use. rcgen
//! makes a fresh ECDSA P-256 chain in milliseconds, valid until the year 4096.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A CA certificate and a server certificate/key signed by it, all PEM.
#[derive(Debug, Clone)]
pub struct TestCerts {
    /// The CA certificate: give it to clients as `sslrootcert`.
    pub ca_pem: String,
    /// The server certificate (for [`crate::ClusterBuilder::ssl`]).
    pub server_cert_pem: String,
    /// The server's private key, PKCS#8 (for [`crate::ClusterBuilder::ssl`]).
    pub server_key_pem: String,
}

/// A fresh CA and a server certificate for `sans` (DNS names or IP addresses, e.g.
/// `&["localhost", "127.0.0.1"]`); the first SAN is also the subject's common name.
///
/// Panics on failure: the inputs are test constants.
pub fn test_ca_and_server_cert(sans: &[&str]) -> TestCerts {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "pgferry test CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().expect("CA key");
    let ca_cert = ca_params.self_signed(&ca_key).expect("self-signing the CA");
    let issuer = Issuer::new(ca_params, ca_key);

    let names: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
    let mut params = CertificateParams::new(names).expect("server certificate SANs");
    params.distinguished_name.push(
        DnType::CommonName,
        sans.first().copied().unwrap_or("pgferry test server"),
    );
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().expect("server key");
    let cert = params
        .signed_by(&key, &issuer)
        .expect("signing the server certificate");

    TestCerts {
        ca_pem: ca_cert.pem(),
        server_cert_pem: cert.pem(),
        server_key_pem: key.serialize_pem(),
    }
}
