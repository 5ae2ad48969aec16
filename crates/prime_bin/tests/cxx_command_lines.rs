//! Command lines written for the C++ prime_server's daemons work on ours: the simulate form with
//! a single upper bound, `prime_workerd` without a work named, every ENABLE_LOGGING the C++
//! `prime_httpd` takes (and 0/1, yes/no, on/off in any case), and `--help` everywhere.

mod common;
use common::*;
use std::process::{Command, Stdio};

#[test]
fn prime_serverd_simulates_up_to_a_single_bound_as_the_cxx_one() {
    // `prime_serverd 1000 1`: the odd numbers from 3 to 1000, of which 167 are prime.
    let out = Command::new(bin("prime_serverd"))
        .args(["1000", "1"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains("167 primes found"), "{stdout}");
    assert!(stdout.contains("499 requests made"), "{stdout}");
    // The range form says the same.
    let out = Command::new(bin("prime_serverd"))
        .args(["3,1000", "1"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("167 primes found"));
}

#[test]
fn prime_workerd_without_a_work_serves_the_files_of_its_directory_as_the_cxx_one() {
    let dir = temp_dir("cxx-workerd");
    let root = dir.join("root");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("hello.txt"), "hello from the working directory\n").unwrap();
    let ep = |name: &str| format!("ipc://{}/{name}", dir.display());
    let (up, down, lb, int) = (ep("in"), ep("out"), ep("lb"), ep("int"));
    let _proxy = Proc::start("prime_proxyd", &[&up, &down]);
    // LISTEN PROXY LOOPBACK INTERRUPT ENABLE_LOGGING MAX_REQUEST_SIZE TIMEOUT_SECONDS
    let mut front = Proc::start(
        "prime_httpd",
        &["127.0.0.1:0", &up, &lb, &int, "false", "1000", "20"],
    );
    let addr = front.listening();
    let log = dir.join("worker.log");
    let mut worker = Proc {
        child: Command::new(bin("prime_workerd"))
            .args([&down, "-", &lb, &int])
            .current_dir(&root)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
        name: "prime_workerd".into(),
    };
    let mut s = connect(addr);
    let (status, _, body) = http(&mut s, &get("/hello.txt")).expect("no answer");
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        (status, body.as_str()),
        (200, "hello from the working directory\n"),
        "{log_text}"
    );
    assert!(worker.child.try_wait().unwrap().is_none(), "{log_text}");
    // It says what it serves, and how to choose another work.
    assert!(
        log_text.contains("no --work") && log_text.contains("prime_parse"),
        "{log_text}"
    );
    let (status, _, _) = http(&mut s, &get("/.hidden")).unwrap();
    assert_eq!(status, 404);
    let _ = std::fs::remove_dir_all(dir);
}

/// Starts `prime_httpd` with the C++ arguments and ENABLE_LOGGING `value`, makes one request,
/// stops it, and returns its log.
fn front_log_with_enable_logging(value: &str) -> String {
    let dir = temp_dir("cxx-enable-logging");
    let ep = |name: &str| format!("ipc://{}/{name}", dir.display());
    let log = dir.join("front.log");
    // LISTEN PROXY LOOPBACK INTERRUPT ENABLE_LOGGING MAX_REQUEST_SIZE TIMEOUT_SECONDS
    // DRAIN_SECONDS HEALTH_PATH
    let mut front = Proc::start_logging(
        "prime_httpd",
        &[
            "127.0.0.1:0",
            &ep("proxy"),
            &ep("lb"),
            &ep("int"),
            value,
            "1000",
            "1",
            "0",
            "/health",
        ],
        Stdio::from(std::fs::File::create(&log).unwrap()),
    );
    let addr = front.listening();
    http(&mut connect(addr), &get("/health")).expect("no answer");
    front.stop();
    let text = std::fs::read_to_string(&log).unwrap();
    let _ = std::fs::remove_dir_all(dir);
    text
}

#[test]
fn enable_logging_takes_what_the_cxx_prime_httpd_takes_and_more() {
    let access_line = |log: &str| {
        log.lines()
            .any(|l| l.contains("access") && l.contains("/health"))
    };
    for on in ["true", "TRUE", "1", "yes", "On"] {
        let log = front_log_with_enable_logging(on);
        assert!(access_line(&log), "{on}: no access line in\n{log}");
    }
    for off in ["false", "False", "0", "no", "OFF"] {
        let log = front_log_with_enable_logging(off);
        assert!(!access_line(&log), "{off}: an access line in\n{log}");
    }
    // Any other value is on in the C++; here too, with a warning naming it.
    let log = front_log_with_enable_logging("verbose");
    assert!(access_line(&log), "{log}");
    let warning = log
        .lines()
        .find(|l| l.contains("WARN") && l.contains("ENABLE_LOGGING"));
    assert!(warning.is_some_and(|l| l.contains("verbose")), "{log}");
}

#[test]
fn every_daemon_and_client_answers_help_with_its_usage() {
    for name in [
        "prime_serverd",
        "prime_httpd",
        "prime_proxyd",
        "prime_workerd",
        "prime_echod",
        "prime_filed",
        "prime_echo_client",
        "prime_keygen",
        "prime_top",
    ] {
        let out = Command::new(bin(name)).arg("--help").output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{name} --help: {out:?}");
        assert!(
            stdout.contains(&format!("Usage: {name}")),
            "{name}: {stdout}"
        );
    }
}

#[test]
fn every_daemon_s_help_states_the_rule_for_flags_and_the_file() {
    for name in [
        "prime_serverd",
        "prime_httpd",
        "prime_proxyd",
        "prime_workerd",
        "prime_echod",
        "prime_filed",
    ] {
        let out = Command::new(bin(name)).arg("--help").output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).replace('\n', " ");
        assert!(
            stdout.contains("a flag given on the command line overrides the file's value")
                && stdout.contains("a flag not given keeps the file's value"),
            "{name}: {stdout}"
        );
        assert!(stdout.contains("--config"), "{name}: no --config");
    }
}
