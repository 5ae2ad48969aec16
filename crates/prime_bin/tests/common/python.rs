//! The Python the tests run peers with: a virtual environment under cargo's target directory
//! with the `python/` package and pyzmq from PyPI, made and updated by the tests themselves.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// The virtual environment's python, with `prime_server` (python/) and pyzmq installed.
pub fn python() -> &'static PathBuf {
    static PY: OnceLock<PathBuf> = OnceLock::new();
    PY.get_or_init(|| {
        let venv = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("py-venv");
        let py = venv.join("bin/python");
        let ready = || {
            Command::new(&py)
                .args(["-c", "import zmq, prime_server"])
                .status()
                .is_ok_and(|s| s.success())
        };
        if !ready() {
            let ok = Command::new("python3")
                .args(["-m", "venv"])
                .arg(&venv)
                .status()
                .unwrap();
            assert!(ok.success(), "python3 -m venv failed");
        }
        // Install the package from the repository (its dependencies the first time), so the
        // tests always run the current sources the way a user installs them. Through `python
        // -m pip`: a venv copied from another checkout keeps that checkout's path in the
        // `#!` line of its `bin/pip`, which would install into the other venv.
        let pkg = concat!(env!("CARGO_MANIFEST_DIR"), "/../../python");
        let pip = |args: &[&str]| {
            let out = Command::new(&py)
                .args(["-m", "pip"])
                .args(args)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "pip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        pip(&["install", "-q", "--force-reinstall", "--no-deps", pkg]);
        if !ready() {
            pip(&["install", "-q", pkg]);
            assert!(ready(), "the python package does not import");
        }
        py
    })
}
