//! TLS and the HTTP client: rustls with the ring provider, `ca_file` as the only trust anchor
//! when set (else the system bundle), redirects only to the same origin, no proxy.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use super::{VaultError, http::http_error_text};

/// System CA bundles, in the order tried (Debian/Ubuntu first).
pub const SYSTEM_CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// The HTTP client: TLS roots read now (required only when TLS is used: `need_roots`), a
/// redirect followed only to the same scheme, host and port, proxy variables ignored, every
/// request bounded by `timeout`.
pub(super) fn http_client(
    ca_file: Option<&Path>,
    need_roots: bool,
    timeout: Duration,
) -> Result<reqwest::Client, VaultError> {
    let tls = tls_config(ca_file, need_roots)?;
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .redirect(reqwest::redirect::Policy::custom(|attempt| {
            let same_origin = attempt.previous().first().is_some_and(|first| {
                let next = attempt.url();
                first.scheme() == next.scheme()
                    && first.host_str() == next.host_str()
                    && first.port_or_known_default() == next.port_or_known_default()
            });
            if same_origin && attempt.previous().len() <= 5 { attempt.follow() } else { attempt.stop() }
        }))
        .no_proxy()
        .timeout(timeout)
        .connect_timeout(timeout)
        .user_agent(concat!("fence-agent/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| VaultError::Config(format!("building the HTTP client: {}", http_error_text(e))))
}

/// The TLS configuration: `ca_file` as the only roots, else the system bundle (required only
/// when TLS is used: `need_roots`).
fn tls_config(ca_file: Option<&Path>, need_roots: bool) -> Result<rustls::ClientConfig, VaultError> {
    use rustls_pki_types::{CertificateDer, pem::PemObject as _};
    let mut roots = rustls::RootCertStore::empty();
    let bundle = match ca_file {
        Some(p) => Some(p.to_owned()),
        None => SYSTEM_CA_BUNDLES.iter().map(PathBuf::from).find(|p| p.exists()),
    };
    match bundle {
        Some(path) => {
            let pem = std::fs::read(&path).map_err(|source| VaultError::Io { path: path.clone(), source })?;
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<_, _>>()
                .map_err(|e| VaultError::Config(format!("{}: not a PEM certificate bundle ({e})", path.display())))?;
            let (added, _ignored) = roots.add_parsable_certificates(certs);
            if added == 0 && need_roots {
                return Err(VaultError::Config(format!("{}: holds no usable CA certificate", path.display())));
            }
        }
        None if need_roots => {
            return Err(VaultError::Config(format!(
                "no system CA bundle ({}); install ca-certificates or set vault.ca_file",
                SYSTEM_CA_BUNDLES[0]
            )));
        }
        None => {}
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| VaultError::Config(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tls)
}
