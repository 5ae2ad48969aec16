//! The bench scripts' rules (bench/README.md), without running a benchmark (each builds the
//! release binaries and runs for minutes): they find the binaries where cargo puts them
//! (`CARGO_TARGET_DIR` honoured), and a run writes its table to bench/out/ (ignored by git),
//! copying it to bench/results/ (what BENCHMARKS.md quotes) only with `--save`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

fn benchlib(args: &[&str], env: &[(&str, &str)], stdin: &str) -> std::process::Output {
    let mut child = Command::new("python3")
        .arg("bench/benchlib.py")
        .args(args)
        .envs(env.iter().copied())
        .current_dir(ROOT)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "benchlib {args:?}: {out:?}");
    out
}

#[test]
fn the_bench_scripts_run_the_binaries_from_cargos_target_directory() {
    let dir = std::env::temp_dir().join(format!("ps-bench-target-{}", std::process::id()));
    let release = |env: &[(&str, &str)]| -> PathBuf {
        let out = benchlib(&["release-dir"], env, "");
        PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
    };
    assert_eq!(
        release(&[("CARGO_TARGET_DIR", dir.to_str().unwrap())]),
        dir.join("release")
    );
    // A relative one is taken from the repository, where the scripts run cargo.
    let root = Path::new(ROOT).canonicalize().unwrap();
    assert_eq!(
        release(&[("CARGO_TARGET_DIR", "some/target")]),
        root.join("some/target/release")
    );
    // No script names a target folder of its own, nor writes bench/results/ itself.
    for entry in std::fs::read_dir(root.join("bench")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !(name.ends_with(".py") || name.ends_with(".sh")) || name == "benchlib.py" {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for (i, line) in text.lines().enumerate() {
            let code = line.split('#').next().unwrap();
            assert!(
                !code.contains("target/release") && !code.contains("\"target\""),
                "bench/{name}:{}: a target folder of its own: {line}",
                i + 1
            );
            assert!(
                !(code.contains("bench/results") && (code.contains("open(") || code.contains('>'))),
                "bench/{name}:{}: writes bench/results/ itself: {line}",
                i + 1
            );
        }
    }
}

#[test]
fn a_bench_table_goes_to_bench_out_and_to_bench_results_only_with_save() {
    let name = format!("zz-test-{}.md", std::process::id());
    let out = Path::new(ROOT).join("bench/out").join(&name);
    let results = Path::new(ROOT).join("bench/results").join(&name);
    let printed = benchlib(&["write", &name], &[], "| a | b |\n");
    assert_eq!(String::from_utf8_lossy(&printed.stdout), "| a | b |\n");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "| a | b |\n");
    assert!(
        !results.exists(),
        "written to bench/results/ without --save"
    );
    benchlib(&["write", &name, "--save"], &[], "| c |\n");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "| c |\n");
    assert_eq!(std::fs::read_to_string(&results).unwrap(), "| c |\n");
    std::fs::remove_file(&out).unwrap();
    std::fs::remove_file(&results).unwrap();
    // bench/out/ is ignored by git: a trial run leaves the repository unmodified.
    let gitignore = std::fs::read_to_string(Path::new(ROOT).join(".gitignore")).unwrap();
    assert!(
        gitignore.lines().any(|l| l.trim() == "bench/out/"),
        "bench/out/ is not in .gitignore"
    );
}
