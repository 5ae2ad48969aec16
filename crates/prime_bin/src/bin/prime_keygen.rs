//! prime_keygen: writes CURVE key pairs for a deployment's roles.
//!
//! `prime_keygen [--dir keys] NAME...` writes `NAME.public` and `NAME.secret` (mode 0600) for
//! each name into the folder (created if missing, mode 0700), and prints each public key. It
//! never overwrites a key. See the README's Security section for which roles need which keys.

use anyhow::Context as _;
use clap::Parser;
use prime_server::security;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Writes CURVE key pairs: NAME.public (give it to the peers) and NAME.secret (mode \
             0600, keep it on the hosts that run NAME)"
)]
struct Args {
    /// The folder to write into (created if missing).
    #[arg(long, default_value = "keys")]
    dir: PathBuf,
    /// The key pairs to write: one per role (`front`, `parse-proxy`, `parse-workers`, …).
    #[arg(required = true)]
    names: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    for name in &args.names {
        anyhow::ensure!(
            !name.is_empty() && !name.contains('/') && !name.starts_with('.'),
            "{name:?}: a key name is a plain file name (no '/', not starting with '.')"
        );
    }
    if !args.dir.exists() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&args.dir)
            .with_context(|| format!("cannot create {}", args.dir.display()))?;
    }
    for name in &args.names {
        let base = args.dir.join(name);
        let public = security::generate(&base)?;
        println!(
            "{name}: {} (public key in {}, secret in {})",
            public,
            security::public_path(&base).display(),
            security::secret_path(&base).display()
        );
    }
    Ok(())
}
