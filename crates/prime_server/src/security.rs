//! Who may talk to whom: the CURVE keys of each role of a deployment, and their files.
//!
//! Every zmq socket that binds (a server's loopback and interrupt endpoints, a proxy's upstream
//! and downstream, a zmq client front) is a CURVE server with its role's key pair and admits
//! only the keys of the roles that connect to it; every socket that connects proves its role's
//! key and checks the server's. Roles and what they admit:
//!
//! | bound by | endpoint | admits |
//! |---|---|---|
//! | a front | loopback, interrupt | the workers of every stage |
//! | a front | zmq_listen | the zmq clients |
//! | stage 1's proxy | upstream | the fronts |
//! | stage N's proxy | upstream | the workers of stage N − 1 |
//! | stage N's proxy | downstream | the workers of stage N |
//!
//! **Key files.** `prime_keygen NAME` writes `NAME.public` and `NAME.secret` (40 characters of
//! Z85 text each, after comment lines starting with `#`); the secret file is created mode 0600.
//! A daemon reads its own role's secret file and its peers' public files, and refuses a secret
//! file that its group or others may read.

use crate::transport::{Admission, Credentials, KeyError, Keypair, PublicKey, SecretKey};
use std::io::Write;
use std::path::{Path, PathBuf};

/// A key file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// It could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// It holds no key.
    #[error("{path}: {source}")]
    Key {
        /// The file.
        path: PathBuf,
        /// Why.
        source: KeyError,
    },
    /// A secret key that others may read.
    #[error(
        "{path}: the secret key may be read by others (mode {mode:o}); \
         make it readable by its owner only: chmod 600 {path}"
    )]
    Exposed {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// `prime_keygen` would overwrite a key.
    #[error("{path} exists already: remove it first, or choose another name")]
    Exists {
        /// The file.
        path: PathBuf,
    },
}

/// The public key file of the key pair `base` (`keys/front` → `keys/front.public`).
pub fn public_path(base: &Path) -> PathBuf {
    with_suffix(base, "public")
}

/// The secret key file of the key pair `base` (`keys/front` → `keys/front.secret`).
pub fn secret_path(base: &Path) -> PathBuf {
    with_suffix(base, "secret")
}

fn with_suffix(base: &Path, suffix: &str) -> PathBuf {
    let mut s = base.as_os_str().to_owned();
    s.push(".");
    s.push(suffix);
    PathBuf::from(s)
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> KeyFileError + '_ {
    move |source| KeyFileError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The key text of a key file: its first line that is neither blank nor a `#` comment.
fn key_text(path: &Path) -> Result<String, KeyFileError> {
    let text = std::fs::read_to_string(path).map_err(io_error(path))?;
    Ok(text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .unwrap_or_default()
        .to_string())
}

/// Reads a public key file.
pub fn read_public(path: &Path) -> Result<PublicKey, KeyFileError> {
    PublicKey::from_z85(&key_text(path)?).map_err(|source| KeyFileError::Key {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads a secret key file (refused if its group or others may read it) and derives the key
/// pair.
pub fn read_secret(path: &Path) -> Result<Keypair, KeyFileError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(io_error(path))?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::Exposed {
            path: path.to_path_buf(),
            mode,
        });
    }
    let secret = SecretKey::from_z85(&key_text(path)?).map_err(|source| KeyFileError::Key {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(Keypair::from_secret(secret))
}

/// Writes a new key pair as `base.public` and `base.secret` (mode 0600, created so: never
/// readable by others, not even for an instant). Refuses to overwrite either file.
pub fn generate(base: &Path) -> Result<PublicKey, KeyFileError> {
    use std::os::unix::fs::OpenOptionsExt;
    let pair = Keypair::generate().map_err(|source| KeyFileError::Key {
        path: base.to_path_buf(),
        source,
    })?;
    let name = base
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (public, secret) = (public_path(base), secret_path(base));
    for path in [&public, &secret] {
        if path.symlink_metadata().is_ok() {
            return Err(KeyFileError::Exists { path: path.clone() });
        }
    }
    let write = |path: &Path, mode: u32, text: String| -> Result<(), KeyFileError> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
            .map_err(io_error(path))?;
        f.write_all(text.as_bytes()).map_err(io_error(path))?;
        f.sync_all().map_err(io_error(path))
    };
    write(
        &secret,
        0o600,
        format!(
            "# prime_server CURVE secret key of {name:?}: keep it on the hosts that run {name:?}, \
             readable by its daemons' user only. Never share it.\n{}\n",
            pair.secret().to_z85()
        ),
    )?;
    write(
        &public,
        0o644,
        format!(
            "# prime_server CURVE public key of {name:?}: give it to the peers that admit \
             {name:?} or connect to it.\n{}\n",
            pair.public().to_z85()
        ),
    )?;
    Ok(pair.public())
}

/// A front server's keys.
#[derive(Clone, Debug)]
pub struct FrontKeys {
    /// Its own key pair: its loopback, interrupt and zmq client sockets serve with it, and it
    /// proves it to stage 1's proxy.
    pub keypair: Keypair,
    /// Stage 1's proxy's public key.
    pub proxy: PublicKey,
    /// The workers admitted to its loopback and interrupt endpoints (every stage's).
    pub workers: Vec<PublicKey>,
    /// The zmq clients admitted to its `zmq_listen` endpoint.
    pub clients: Vec<PublicKey>,
}

impl FrontKeys {
    pub(crate) fn loopback(&self) -> Admission {
        self.admit(&self.workers, "loopback")
    }

    pub(crate) fn interrupt(&self) -> Admission {
        self.admit(&self.workers, "interrupt")
    }

    /// What the zmq client front admits.
    pub fn zmq_clients(&self) -> Admission {
        self.admit(&self.clients, "zmq front")
    }

    pub(crate) fn to_proxy(&self) -> Credentials {
        Credentials {
            keypair: self.keypair.clone(),
            server: self.proxy,
        }
    }

    fn admit(&self, allow: &[PublicKey], role: &str) -> Admission {
        Admission {
            keypair: self.keypair.clone(),
            allow: allow.to_vec(),
            role: role.into(),
        }
    }
}

/// A proxy's keys.
#[derive(Clone, Debug)]
pub struct ProxyKeys {
    /// Its own key pair, for both its endpoints.
    pub keypair: Keypair,
    /// Who may send it jobs: the fronts (stage 1) or the previous stage's workers.
    pub senders: Vec<PublicKey>,
    /// Its stage's workers.
    pub workers: Vec<PublicKey>,
}

impl ProxyKeys {
    pub(crate) fn upstream(&self, stage: &str) -> Admission {
        Admission {
            keypair: self.keypair.clone(),
            allow: self.senders.clone(),
            role: format!("stage {stage} upstream"),
        }
    }

    pub(crate) fn downstream(&self, stage: &str) -> Admission {
        Admission {
            keypair: self.keypair.clone(),
            allow: self.workers.clone(),
            role: format!("stage {stage} downstream"),
        }
    }
}

/// A worker's keys.
#[derive(Clone, Debug)]
pub struct WorkerKeys {
    /// Its own key pair (its stage's).
    pub keypair: Keypair,
    /// Its stage's proxy's public key.
    pub proxy: PublicKey,
    /// The next stage's proxy's public key (none for the last stage).
    pub next_proxy: Option<PublicKey>,
    /// Each front's public key, in the order of the worker's loopback and interrupt endpoints.
    pub fronts: Vec<PublicKey>,
}

impl WorkerKeys {
    pub(crate) fn presenting(&self, server: PublicKey) -> Credentials {
        Credentials {
            keypair: self.keypair.clone(),
            server,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ps-keys-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_generated_pair_reads_back_and_its_secret_file_is_the_owners_only() {
        let dir = temp("gen");
        let base = dir.join("front");
        let public = generate(&base).unwrap();
        assert_eq!(read_public(&public_path(&base)).unwrap(), public);
        assert_eq!(read_secret(&secret_path(&base)).unwrap().public(), public);
        let mode = std::fs::metadata(secret_path(&base))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // Never overwritten.
        assert!(matches!(generate(&base), Err(KeyFileError::Exists { .. })));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_secret_key_others_may_read_is_refused() {
        let dir = temp("exposed");
        let base = dir.join("w");
        generate(&base).unwrap();
        let secret = secret_path(&base);
        for mode in [0o640, 0o604, 0o644] {
            std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = read_secret(&secret).unwrap_err();
            assert!(matches!(err, KeyFileError::Exposed { .. }), "{mode:o}");
            assert!(err.to_string().contains("chmod 600"), "{err}");
        }
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert!(read_secret(&secret).is_ok());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_file_without_a_key_says_which_file() {
        let dir = temp("bad");
        let path = dir.join("x.public");
        std::fs::write(&path, "# only a comment\n\nnot a key\n").unwrap();
        let err = read_public(&path).unwrap_err().to_string();
        assert!(err.contains("x.public") && err.contains("Z85"), "{err}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
