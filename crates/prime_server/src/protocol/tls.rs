//! TLS for the HTTP front: rustls (no OpenSSL), the certificate read from PEM files and re-read
//! on SIGHUP without dropping a connection.
//!
//! A [`Tls`] holds one [`rustls::ServerConfig`] for the life of the front (its session cache
//! included) whose certificate comes from a store that [`Tls::reload`] swaps: a handshake takes
//! the certificate in force when it starts, so connections already open keep theirs and new
//! ones get the new one. A reload that fails (a missing file, a key that does not match the
//! certificate) changes nothing: the old certificate stays in force and the error says why.
//!
//! ALPN offers `h2` and `http/1.1`, in that order: a client that speaks HTTP/2 gets it, any other
//! HTTP/1.1 (a client that offers no ALPN at all too). The crypto provider is *ring*.
//!
//! ```no_run
//! use prime_server::protocol::tls::Tls;
//! # fn main() -> Result<(), prime_server::protocol::tls::TlsError> {
//! let tls = Tls::load("cert.pem".as_ref(), "key.pem".as_ref())?;
//! // ... serve with `HttpConfig { tls: Some(tls.clone()), .. }`; later, after the files changed:
//! tls.reload()?;
//! # Ok(())
//! # }
//! ```

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

/// The ALPN protocols offered, preferred first.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Why a certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read, or holds no PEM item of the kind needed.
    #[error("{path}: {why}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// The certificate and key do not go together, or rustls refuses them.
    #[error("{cert} with {key}: {why}")]
    Refused {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls said.
        why: String,
    },
}

/// The certificate in force, swapped by [`Tls::reload`].
#[derive(Debug)]
struct Store {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for Store {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        )
    }
}

/// A front's TLS settings: its certificate and key files, and the rustls configuration that
/// serves them. Cheap to clone (the clones share the certificate store).
#[derive(Clone)]
pub struct Tls {
    cert: PathBuf,
    key: PathBuf,
    store: Arc<Store>,
    config: Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads a certificate chain (PEM, leaf first) and its private key (PEM: PKCS#8, PKCS#1 or
/// SEC1), and checks that they go together.
fn read_pair(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let file_error = |path: &Path, why: String| TlsError::File {
        path: path.to_path_buf(),
        why,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| file_error(cert, pem_error(e)))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_error(cert, pem_error(e)))?;
    if chain.is_empty() {
        return Err(file_error(cert, "no CERTIFICATE in it".into()));
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| file_error(key, pem_error(e)))?;
    CertifiedKey::from_der(chain, private, &provider()).map_err(|e| TlsError::Refused {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        why: match e {
            rustls::Error::InconsistentKeys(_) => {
                "the key is not the certificate's (its public key differs)".into()
            }
            other => other.to_string(),
        },
    })
}

fn pem_error(e: rustls::pki_types::pem::Error) -> String {
    match e {
        rustls::pki_types::pem::Error::Io(e) => e.to_string(),
        rustls::pki_types::pem::Error::NoItemsFound => "no PEM item of the kind needed".into(),
        other => format!("not valid PEM ({other:?})"),
    }
}

impl Tls {
    /// Reads the certificate chain in `cert` and the private key in `key` (both PEM) and makes
    /// the configuration that serves them (TLS 1.2 and 1.3, ALPN `h2` then `http/1.1`).
    pub fn load(cert: &Path, key: &Path) -> Result<Tls, TlsError> {
        let certified = read_pair(cert, key)?;
        let store = Arc::new(Store {
            current: RwLock::new(Arc::new(certified)),
        });
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Refused {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
                why: e.to_string(),
            })?
            .with_no_client_auth()
            .with_cert_resolver(store.clone());
        config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        Ok(Tls {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            store,
            config: Arc::new(config),
        })
    }

    /// Reads the files again and, if they hold a certificate and a key that go together,
    /// serves them from the next handshake on. On an error nothing changes.
    pub fn reload(&self) -> Result<(), TlsError> {
        let certified = Arc::new(read_pair(&self.cert, &self.key)?);
        *self
            .store
            .current
            .write()
            .unwrap_or_else(PoisonError::into_inner) = certified;
        Ok(())
    }

    /// The certificate file.
    pub fn cert_path(&self) -> &Path {
        &self.cert
    }

    /// The key file.
    pub fn key_path(&self) -> &Path {
        &self.key
    }

    /// What accepts TLS connections with this configuration.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.config.clone())
    }

    /// The leaf certificate in force (DER).
    pub fn certificate(&self) -> CertificateDer<'static> {
        self.store
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .cert[0]
            .clone()
    }
}

/// Re-reads the certificates of `fronts` on every SIGHUP until `shutdown` stops, logging each
/// outcome: `TLS certificate reloaded`, or an error and `keeping the certificate in force`.
/// SIGHUP is taken over when this is called (from then on it no longer ends the process), so no
/// signal sent after the call is missed; the work is done by the future it returns, to be
/// spawned. Call it inside a tokio runtime.
pub fn reload_on_sighup(
    fronts: Vec<Tls>,
    shutdown: crate::shutdown::Shutdown,
) -> std::io::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangups = signal(SignalKind::hangup())?;
    Ok(async move {
        loop {
            tokio::select! {
                _ = shutdown.stopped() => return,
                got = hangups.recv() => if got.is_none() { return },
            }
            for tls in &fronts {
                match tls.reload() {
                    Ok(()) => tracing::info!(
                        cert = %tls.cert.display(),
                        key = %tls.key.display(),
                        "TLS certificate reloaded"
                    ),
                    Err(e) => tracing::error!(
                        error = %e,
                        "cannot reload the TLS certificate: keeping the certificate in force"
                    ),
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate for `name` and its key, written to `dir` as PEM files.
    fn pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let rcgen::CertifiedKey { cert, key_pair } =
            rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
        let (c, k) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key_pair.serialize_pem()).unwrap();
        (c, k)
    }

    #[test]
    fn a_reload_swaps_the_certificate_and_a_bad_one_changes_nothing() {
        let dir = std::env::temp_dir().join(format!("ps-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (c1, k1) = pair(&dir, "one.test");
        let (c2, k2) = pair(&dir, "two.test");
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::copy(&c1, &cert).unwrap();
        std::fs::copy(&k1, &key).unwrap();
        let tls = Tls::load(&cert, &key).unwrap();
        let first = tls.certificate();
        assert_eq!(
            first.as_ref(),
            CertificateDer::from_pem_file(&c1).unwrap().as_ref()
        );
        // The second certificate with the first key: refused, the first stays.
        std::fs::copy(&c2, &cert).unwrap();
        let e = tls.reload().unwrap_err();
        assert!(matches!(e, TlsError::Refused { .. }), "{e}");
        assert_eq!(tls.certificate(), first);
        // Not PEM at all: refused, naming the file.
        std::fs::write(&key, "not a key").unwrap();
        let e = tls.reload().unwrap_err().to_string();
        assert!(e.contains("key.pem"), "{e}");
        assert_eq!(tls.certificate(), first);
        // Both files of the second pair: in force.
        std::fs::copy(&k2, &key).unwrap();
        tls.reload().unwrap();
        assert_eq!(
            tls.certificate().as_ref(),
            CertificateDer::from_pem_file(&c2).unwrap().as_ref()
        );
        assert!(Tls::load(&dir.join("missing.pem"), &key).is_err());
        let _ = std::fs::remove_dir_all(dir);
    }
}
