//! A development PKI in one folder (`rlhf certs`, `rlhf run --secure`): a CA, a server
//! certificate for the given host names and addresses, a client certificate for mutual TLS, and a
//! random token. For trying TLS out and for tests: production setups bring their own PKI
//! (cert-manager, Vault, a site CA) and keep the CA's key away from the machines that run rlhf.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

use crate::SecureError;

/// The files [`write`] makes, and where each setting should point.
#[derive(Debug, Clone)]
pub struct DevPki {
    /// `tls.ca` for every role.
    pub ca: PathBuf,
    /// `tls.cert` / `tls.key` for servers.
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// `tls.client_cert` / `tls.client_key` for clients (mutual TLS).
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// `auth.token_file` for every role.
    pub token: PathBuf,
}

/// Writes a CA, a server certificate valid for `hosts` (DNS names or IP addresses), a client
/// certificate and a token into `dir`. Private keys are written readable by their owner only.
pub fn write(dir: &Path, hosts: &[String]) -> Result<DevPki, SecureError> {
    std::fs::create_dir_all(dir).map_err(|error| SecureError::Write { path: dir.into(), error })?;
    let files = DevPki {
        ca: dir.join("ca.pem"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server.key"),
        client_cert: dir.join("client.pem"),
        client_key: dir.join("client.key"),
        token: dir.join("token"),
    };

    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name.push(DnType::CommonName, "rlhf development CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca.self_signed(&ca_key)?;
    write_file(&files.ca, ca_cert.pem().as_bytes(), false)?;
    let issuer = Issuer::new(ca, ca_key);

    let mut server = CertificateParams::new(hosts.to_vec())?;
    server.distinguished_name.push(DnType::CommonName, hosts.first().map(String::as_str).unwrap_or("rlhf"));
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_key = KeyPair::generate()?;
    write_file(&files.server_cert, server.signed_by(&server_key, &issuer)?.pem().as_bytes(), false)?;
    write_file(&files.server_key, server_key.serialize_pem().as_bytes(), true)?;

    let mut client = CertificateParams::new(Vec::<String>::new())?;
    client.distinguished_name.push(DnType::CommonName, "rlhf client");
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_key = KeyPair::generate()?;
    write_file(&files.client_cert, client.signed_by(&client_key, &issuer)?.pem().as_bytes(), false)?;
    write_file(&files.client_key, client_key.serialize_pem().as_bytes(), true)?;

    let mut secret = [0u8; 32];
    rustls::crypto::aws_lc_rs::default_provider()
        .secure_random
        .fill(&mut secret)
        .map_err(|_| SecureError::Setting { field: "token", expected: "randomness from the system".into() })?;
    let token: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    write_file(&files.token, format!("{token}\n").as_bytes(), true)?;
    Ok(files)
}

fn write_file(path: &Path, bytes: &[u8], private: bool) -> Result<(), SecureError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true).mode(if private { 0o600 } else { 0o644 });
    let mut file = options.open(path).map_err(|error| SecureError::Write { path: path.into(), error })?;
    file.write_all(bytes).map_err(|error| SecureError::Write { path: path.into(), error })
}
